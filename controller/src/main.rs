//! `smartscale-controller`: run, once, check, simulate, lambda, status, history. See README for
//! each command. Started without a command by the Lambda runtime (as `bootstrap`), it is `lambda`.

use clap::{Parser, Subcommand};
use smartscale_common::logging::{self, LogFormat};
use smartscale_controller::config::{self, Purpose};
use smartscale_controller::simulator::{self, trace};
use smartscale_controller::{Error, inspect, run};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "smartscale-controller",
    version,
    about = "Autoscaler for K3s worker groups on AWS"
)]
struct Cli {
    /// Config file (YAML). Required for run, once and check; optional for simulate; status and
    /// history read SMARTSCALE_CONFIG_PARAMETER (an SSM parameter) without it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format: text or json (overrides the config's log_format).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Control loop: a cycle every `interval` and on unschedulable pods; serves the HTTP API.
    Run {
        /// Decide, log, export and record, but never change AWS.
        #[arg(long)]
        dry_run: bool,
    },
    /// Exactly one cycle; prints the decision as one JSON object.
    Once {
        #[arg(long)]
        dry_run: bool,
    },
    /// Validates the config and prints every problem. Exit 0 if valid, 2 if not.
    Check,
    /// Lambda mode: one cycle per invocation (what the binary does as the `bootstrap` of a
    /// provided.al2023 function; see README "Lambda mode").
    Lambda,
    /// The lease, the stored state and the last decision, read from DynamoDB, as JSON.
    Status {
        /// The dry-run replica's records.
        #[arg(long)]
        dry_run: bool,
    },
    /// The newest history records from DynamoDB, as JSON (newest first).
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The dry-run replica's records.
        #[arg(long)]
        dry_run: bool,
    },
    /// Digital twin: replays demand through the real policy and compares it with baselines.
    Simulate {
        /// Built-in scenario: steady, diurnal, flash-sale, ramp, noisy.
        #[arg(long, default_value = "flash-sale", conflicts_with = "trace")]
        scenario: String,
        /// CSV trace `time_s,cpu_cores[,memory_gib]` instead of a scenario.
        #[arg(long)]
        trace: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the chart (chart.svg).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // The Lambda runtime starts `bootstrap` without arguments.
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            return smartscale_controller::lambda::main(cli.log_format);
        }
        return fail(
            "a command is required (run, once, check, simulate, lambda, status, history); see --help",
        );
    };
    match command {
        Command::Check => check(cli.config),
        Command::Lambda => smartscale_controller::lambda::main(cli.log_format),
        Command::Status { dry_run } => inspect(cli.config, Inspect::Status { dry_run }),
        Command::History { limit, dry_run } => {
            inspect(cli.config, Inspect::History { limit, dry_run })
        }
        Command::Simulate {
            scenario,
            trace,
            seed,
            out,
            json,
        } => simulate(cli.config, scenario, trace, seed, out, json),
        Command::Run { dry_run } => with_runtime(cli.config, cli.log_format, false, dry_run),
        Command::Once { dry_run } => with_runtime(cli.config, cli.log_format, true, dry_run),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn require(config: Option<PathBuf>) -> Result<PathBuf, String> {
    config.ok_or_else(|| "--config FILE is required for this command".to_string())
}

fn check(config: Option<PathBuf>) -> ExitCode {
    let path = match require(config) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match config::load(&path, Purpose::Controller) {
        Ok(c) => {
            println!(
                "{}: valid (cluster {}, {} node group(s), interval {})",
                path.display(),
                c.cluster_id,
                c.node_groups.len(),
                smartscale_common::duration::format(c.interval)
            );
            for w in &c.warnings {
                eprintln!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(Error::Config(problems)) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  - {p}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn with_runtime(
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    once: bool,
    dry_run: bool,
) -> ExitCode {
    let path = match require(config) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let cfg = match config::load(&path, Purpose::Controller) {
        Ok(c) => c,
        Err(Error::Config(problems)) => {
            return fail(format!(
                "invalid configuration in {} ({} problem(s), first: {}); run `smartscale-controller --config {} check` for details",
                path.display(),
                problems.len(),
                problems.first().map(String::as_str).unwrap_or("?"),
                path.display()
            ));
        }
        Err(e) => return fail(e),
    };
    if let Err(e) = logging::init(log_format.unwrap_or(cfg.log_format)) {
        return fail(e);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        if !once {
            return match run::run(cfg, dry_run).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            };
        }
        match run::once(cfg, dry_run).await {
            Ok(outcome) => match serde_json::to_string(&outcome) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Err(e) => fail(e),
        }
    })
}

enum Inspect {
    Status { dry_run: bool },
    History { limit: u32, dry_run: bool },
}

/// `status` and `history`: the config from `--config`, else from the SSM parameter named by
/// `SMARTSCALE_CONFIG_PARAMETER` (the Lambda mode's).
fn inspect(config: Option<PathBuf>, what: Inspect) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let cfg = match &config {
            Some(path) => config::load(path, Purpose::Controller),
            None => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                let ssm = aws_sdk_ssm::Client::new(&sdk);
                smartscale_controller::lambda::source::load(&ssm, &env)
                    .await
                    .map(|l| l.config)
            }
        };
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let sdk = sdk
            .to_builder()
            .timeout_config(run::aws_timeouts(&cfg))
            .build();
        let out = match what {
            Inspect::Status { dry_run } => {
                inspect::status(&cfg, &sdk, dry_run).await.and_then(|s| {
                    serde_json::to_string_pretty(&s).map_err(|e| Error::Other(e.to_string()))
                })
            }
            Inspect::History { limit, dry_run } => inspect::history(&cfg, &sdk, limit, dry_run)
                .await
                .and_then(|h| {
                    serde_json::to_string_pretty(&serde_json::json!({ "history": h }))
                        .map_err(|e| Error::Other(e.to_string()))
                }),
        };
        match out {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        }
    })
}

fn simulate(
    config: Option<PathBuf>,
    scenario: String,
    trace_file: Option<PathBuf>,
    seed: u64,
    out: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let cfg = match &config {
        Some(p) => match config::load(p, Purpose::Simulation) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => config::simulation_default(),
    };
    let trace = match &trace_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => trace::parse_csv(&path.display().to_string(), &text),
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        },
        None => trace::scenario(&scenario, seed),
    };
    let trace = match trace {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut opts = cfg.simulate.clone();
    if let Some(g) = cfg.node_groups.first() {
        opts.min = g.min;
        opts.max = g.max;
        if let Some(a) = g.allocatable {
            opts.allocatable = a;
        }
        if let Some(p) = g.hourly_price {
            opts.hourly_price = p;
        }
    }
    let long = trace.end_s > 2 * 86_400;
    let mut progress = |name: &str, done: f64| {
        if long {
            eprintln!("simulating {name}: {:.0}%", done * 100.0);
        }
    };
    let report = simulator::run_all(&trace, &cfg.policy, &opts, seed, &mut progress);
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if let Some(dir) = out {
        let path = dir.join("chart.svg");
        match smartscale_common::files::write_shared(
            &path,
            simulator::chart::svg(&report).as_bytes(),
        ) {
            Ok(()) => eprintln!("chart written to {}", path.display()),
            Err(e) => return fail(e),
        }
    }
    ExitCode::SUCCESS
}
