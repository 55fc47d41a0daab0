//! The digital twin on a week-long trace at 15 s resolution, all policies.
//! Target (issue 6): ≤ 5 s on 2 cores. Run: `cargo bench -p smartscale-controller --bench twin`.

mod common;

use smartscale_controller::policy::PolicyConfig;
use smartscale_controller::simulator::{self, SimOptions, trace};

fn main() {
    // Seven days of the diurnal shape, written as a CSV trace (what a user would feed in).
    let two_days = trace::scenario("diurnal", 1).expect("built-in scenario");
    let day: Vec<_> = two_days.rows.iter().filter(|r| r.time_s < 86_400).collect();
    let mut csv = String::from("time_s,cpu_cores\n");
    for d in 0..7 {
        for r in &day {
            csv.push_str(&format!("{},{}\n", d * 86_400 + r.time_s, r.cpu));
        }
    }
    let week = trace::parse_csv("week.csv", &csv).expect("generated trace");
    let rows = week.rows.len();
    let wall = std::time::Instant::now();
    let cpu0 = common::cpu_time();
    let report = simulator::run_all(
        &week,
        &PolicyConfig::default(),
        &SimOptions::default(),
        1,
        &mut |_, _| {},
    );
    println!(
        "week-long trace ({} days, {rows} rows at 15 s), 5 policies + oracle: {:?} wall, {:?} CPU (target ≤ 5 s)",
        week.end_s / 86_400,
        wall.elapsed(),
        common::cpu_time() - cpu0
    );
    print!("{}", report.table());
}
