//! Measures the fencing window: the time from the controller's last lease check to the moment
//! the SDK hands an Auto Scaling write to the network. AWS calls cannot carry a fencing token,
//! so this window (plus the network) is where a paused or slow old leader could still act; it is
//! exported as `smartscale_fence_window_seconds` so an operator sees how small it really is.

use aws_sdk_autoscaling::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_autoscaling::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_autoscaling::error::BoxError;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared between the cycle (which stamps each lease check) and the SDK interceptor.
#[derive(Clone, Debug, Default)]
pub struct FenceWindow {
    checked: Arc<Mutex<Option<Instant>>>,
}

impl FenceWindow {
    /// The lease was just found fresh; the next write is measured from here.
    pub fn checked(&self) {
        *lock(&self.checked) = Some(Instant::now());
    }

    fn take(&self) -> Option<Instant> {
        lock(&self.checked).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The SDK side: observes the window of every request sent after a check.
#[derive(Debug)]
pub struct FenceWindowInterceptor {
    pub window: FenceWindow,
    pub histogram: Histogram,
}

impl Intercept for FenceWindowInterceptor {
    fn name(&self) -> &'static str {
        "SmartScaleFenceWindow"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(at) = self.window.take() {
            let secs = at.elapsed().as_secs_f64();
            self.histogram.observe(secs);
            tracing::debug!(
                window_us = secs * 1e6,
                "fencing window: last lease check to transmit"
            );
        }
        Ok(())
    }
}
