use smartscale_controller::{
    policy::PolicyConfig,
    simulator::{self, SimOptions},
};
fn main() {
    let seed = 1;
    for s in simulator::trace::SCENARIOS {
        let tr = simulator::trace::scenario(s, seed).unwrap();
        let t0 = std::time::Instant::now();
        let r = simulator::run_all(
            &tr,
            &PolicyConfig::default(),
            &SimOptions::default(),
            seed,
            &mut |_, _| {},
        );
        println!("{}({:?})", r.table(), t0.elapsed());
    }
}
