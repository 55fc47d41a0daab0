//! `smartscale-agent --config FILE join | run | drain [--reason TEXT]`. See agent/README.md.

use clap::{Parser, Subcommand};
use smartscale_agent::context::{ApiCheck, Context};
use smartscale_agent::pipeline::Pipeline;
use smartscale_agent::{Error, config, join, run};
use smartscale_common::logging::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "smartscale-agent",
    version,
    about = "SmartScale node agent: joins the cluster at boot, drains this node when it is terminated"
)]
struct Cli {
    /// Config file (YAML); keys can be overridden with SMARTSCALE_AGENT_<KEY> variables.
    #[arg(long, default_value = "/etc/smartscale/agent.yaml")]
    config: PathBuf,
    /// Log format (overrides the config's log_format): text or json.
    #[arg(long)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot: write the k3s config with the join token, start k3s, wait for the node to be Ready,
    /// complete the launch lifecycle hook (ABANDON on failure). Exits 0 when joined.
    Join,
    /// Daemon: watch IMDS and drain this node on termination or spot interruption. Stops on
    /// SIGTERM without draining.
    Run,
    /// Drain this node now through the same pipeline (and complete the terminate hook if the
    /// instance is already terminating).
    Drain {
        /// Why, recorded on the Node (annotation smartscale.io/drain-reason) and in the log.
        #[arg(long, default_value = "manual drain")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(cli.log_format.unwrap_or(config.log_format)) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // One thread: the agent waits on the network almost all the time, and a small footprint
    // matters on every worker.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Error> = runtime.block_on(async move {
        match cli.command {
            Command::Join => join::join(&config).await,
            Command::Run => run::run(config).await,
            Command::Drain { reason } => {
                let ctx = Arc::new(Context::build(config, ApiCheck::Now).await?);
                let node = ctx.node.clone();
                let pipeline = Pipeline::new(ctx);
                // Ctrl-C or SIGTERM drops the drain: it removes its record on the way out, so
                // no later notice takes it for a drain in progress.
                let report = tokio::select! {
                    r = pipeline.drain_once(&reason) => r?,
                    () = smartscale_common::shutdown::signal() => {
                        return Err(Error::Interrupted { node });
                    }
                };
                tracing::info!(evicted = report.evicted, "drain finished");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
