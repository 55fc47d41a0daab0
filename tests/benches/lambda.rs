//! Cold start and warm invocation durations of the controller's Lambda mode, under the real AWS
//! Lambda Runtime Interface Emulator against the test world (the AWS model, the real control
//! plane, real Prometheus): `ROUNDS` fresh execution environments, each invoked once cold and
//! `WARM` times warm with EventBridge's scheduled event. The durations are the emulator's own
//! (`INIT REPORT` and `REPORT` lines), as Lambda reports them.
//!
//! `cargo bench -p smartscale-testworld --bench lambda` (the controller binary next to the
//! target's profile, else the debug one: build it first; `SMARTSCALE_BENCH_CONTROLLER=PATH`
//! picks another, e.g. target/release/smartscale-controller). `SMARTSCALE_BENCH_ROUNDS` overrides
//! the number of environments.

use smartscale_testworld::lambda_rie::{
    Function, FunctionOptions, IDENTITY_SECRET, publish_identity, put_config_parameter,
    scheduled_event,
};
use smartscale_testworld::world::{
    World, WorldOptions, controller_config_text, product_binary, prometheus_at,
};
use std::time::Duration;

const WARM: usize = 5;
const PARAMETER: &str = "/smartscale/e2e/controller/config";

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return format!("{name}: no samples");
    }
    let p50 = v[v.len() / 2];
    format!(
        "{name}: median {p50:.0} ms, min {:.0} ms, max {:.0} ms ({} samples)",
        v[0],
        v[v.len() - 1],
        v.len()
    )
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::var("SMARTSCALE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let binary = match std::env::var_os("SMARTSCALE_BENCH_CONTROLLER") {
        Some(path) => std::path::PathBuf::from(path),
        None => product_binary("smartscale-controller")?,
    };
    let w = World::start(WorldOptions::default()).await?;
    let prom = prometheus_at(40.0, 40.0, 2).await?;
    let text = controller_config_text("e2e", &w.table, &w.asg_name, prom.url(), "");
    put_config_parameter(&w, PARAMETER, &text).await?;
    publish_identity(&w).await?;
    let (mut init, mut cold, mut warm, mut warm_wall) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let f = Function::start_binary(
            &w,
            &binary,
            FunctionOptions {
                timeout_s: 30,
                env: vec![
                    ("SMARTSCALE_CONFIG_PARAMETER".into(), PARAMETER.into()),
                    (
                        "SMARTSCALE_KUBERNETES_SECRET".into(),
                        IDENTITY_SECRET.into(),
                    ),
                ],
            },
        )
        .await?;
        for i in 0..=WARM {
            let r = f.invoke(&scheduled_event(&w.region)).await?;
            if r.failed() {
                return Err(format!("invocation failed: {}", r.text).into());
            }
            if i > 0 {
                warm_wall.push(r.wall.as_secs_f64() * 1000.0);
            }
        }
        let reports = f.wait_reports(WARM + 1).await?;
        init.extend(f.init_durations_ms());
        cold.push(reports[0].duration_ms);
        warm.extend(reports[1..].iter().map(|r| r.duration_ms));
        f.shutdown().await;
    }
    println!("controller binary: {}", binary.display());
    println!("{}", summary("init (process start to ready)", init));
    println!("{}", summary("cold invocation", cold));
    println!("{}", summary("warm invocation", warm));
    println!(
        "{}",
        summary("warm invocation, client wall time", warm_wall)
    );
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(600), bench()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("lambda bench failed: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("lambda bench timed out");
            std::process::exit(1);
        }
    }
}
