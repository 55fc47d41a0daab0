//! `smartscale-agent run`: the daemon. IMDS sources → pipeline, plus the metrics endpoint, until
//! SIGTERM. A stop is not a termination: a drain in progress is left as it is and resumed by
//! the next start (see [`crate::pipeline`]).
//!
//! Nothing here waits for the Kubernetes API server: the IMDS watch, the heartbeats and the
//! metrics start at once, and the node's kube client is built when it can be (the kubelet
//! kubeconfig may not be written yet) and used when the API server answers. A termination that
//! comes while the API server is away (the single K3s server restarting) is heartbeated at once
//! and drained once the API server is back, within the drain deadline.

use crate::config::Config;
use crate::context::{self, ApiCheck, Context};
use crate::pipeline::Pipeline;
use crate::sources::{self, Source};
use crate::{Result, metrics};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub async fn run(config: Config) -> Result<()> {
    let ctx = Arc::new(Context::build(config, ApiCheck::Background).await?);
    let (stop, stopped) = watch::channel(false);
    let mut until_stopped = stopped.clone();
    let server = metrics::serve(ctx.config.metrics_listen, ctx.metrics.clone(), async move {
        let _ = until_stopped.wait_for(|s| *s).await;
    })
    .await?;
    let server = tokio::spawn(server);

    let mut watched = Vec::new();
    if ctx.lifecycle.is_some() {
        watched.push(Source::TargetLifecycle);
    }
    if ctx.instance.capacity_type == "spot" {
        watched.push(Source::SpotInterruption);
        if ctx.settings.rebalance_enabled {
            watched.push(Source::Rebalance);
        }
    }
    let (tx, rx) = mpsc::channel(8);
    // The pipeline hands back the sources of a pass that failed, to be reported again.
    let (rearm_tx, rearm_rx) = mpsc::unbounded_channel();
    let watcher = sources::watch(
        ctx.imds.clone(),
        watched,
        ctx.config.poll_interval,
        tx,
        rearm_rx,
        ctx.metrics.clone(),
    );
    let pipeline = Pipeline::new(ctx.clone());
    let api = {
        let ctx = ctx.clone();
        tokio::spawn(async move { context::watch_api(&ctx).await })
    };
    release_startup_memory();
    tracing::info!(node = %ctx.node, "agent running");
    let result = tokio::select! {
        () = smartscale_common::shutdown::signal() => {
            tracing::info!("stopping without draining (a stop is not a termination)");
            Ok(())
        }
        r = pipeline.run(rx, rearm_tx) => r,
        () = watcher => Ok(()),
    };
    api.abort();
    let _ = stop.send(true);
    let _ = server.await;
    result
}

/// Start-up ran code that will not run again (the AWS credential chain, SSM, YAML, the CLI) and
/// freed what it allocated. Give both back: freed heap to the kernel (`malloc_trim`), and the
/// executable's read-only pages to the page cache (`MADV_PAGEOUT`); the few the idle loop uses
/// fault back in at once. Best effort: a kernel without `MADV_PAGEOUT` (< 5.4) ignores it.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(maps)) = (
            std::fs::read_link("/proc/self/exe"),
            std::fs::read_to_string("/proc/self/maps"),
        ) else {
            return;
        };
        let mut released = 0usize;
        for line in maps.lines() {
            // `start-end perms offset dev inode path`
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [range, perms, _, _, _, path] = fields[..] else {
                continue;
            };
            if std::path::Path::new(path) != exe || perms.contains('w') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: advice on read-only mappings of our own executable; contents are unchanged,
            // pages are read back from the file when next used.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT)
            };
            if rc == 0 {
                released += end - start;
            }
        }
        tracing::debug!(released_kib = released / 1024, "start-up pages handed back");
    }
}
