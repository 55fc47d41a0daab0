//! From the file as written to a `Config`, with one line per problem: what is wrong and how to fix it.

use super::raw::Raw;
use super::{
    ApiConfig, CloudWatchConfig, Config, CustomSignal, NodeGroup, Notifications, PrometheusConfig,
    Purpose, StateConfig, unreachable_default,
};
use crate::policy::{PolicyConfig, Resources};
use std::net::SocketAddr;
use std::time::Duration;

pub(super) fn validate(raw: Raw, purpose: Purpose, p: &mut Vec<String>) -> Config {
    let controller = purpose == Purpose::Controller;
    let mut fallback = unreachable_default();

    let cluster_id = match raw.cluster_id {
        Some(id) if valid_name(&id, 128) => id,
        Some(id) => {
            p.push(format!(
                "cluster_id: `{id}` must be 1–128 characters of letters, digits, `-`, `_` or `.`"
            ));
            id
        }
        None if controller => {
            p.push(
                "cluster_id: required; set it to a name for this cluster (e.g. `cluster_id: prod`)"
                    .into(),
            );
            String::new()
        }
        None => fallback.cluster_id.clone(),
    };

    let interval = raw.interval.0;
    if interval < Duration::from_millis(100) {
        p.push(format!(
            "interval: {} is too short; use at least 100ms (default 30s)",
            smartscale_common::duration::format(interval)
        ));
    }

    let prom_url = match raw.prometheus.url.as_deref() {
        Some(u) => match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                p.push(format!(
                    "prometheus.url: `{u}` must be an http:// or https:// URL with a host"
                ));
                None
            }
            Err(e) => {
                p.push(format!(
                    "prometheus.url: `{u}` is not a URL ({e}); e.g. http://127.0.0.1:9090"
                ));
                None
            }
        },
        None if controller => {
            p.push(
                "prometheus.url: required; e.g. `prometheus: {url: http://127.0.0.1:9090}`".into(),
            );
            None
        }
        None => None,
    };
    let timeout = raw.prometheus.timeout.0;
    if timeout.is_zero() || timeout >= interval {
        p.push(format!(
            "prometheus.timeout: {} must be above 0 and below interval ({})",
            smartscale_common::duration::format(timeout),
            smartscale_common::duration::format(interval)
        ));
    }
    for (name, q) in [
        ("cpu", &raw.prometheus.queries.cpu),
        ("memory", &raw.prometheus.queries.memory),
        ("pending_pods", &raw.prometheus.queries.pending_pods),
        ("nodes", &raw.prometheus.queries.nodes),
    ] {
        if q.trim().is_empty() {
            p.push(format!(
                "prometheus.queries.{name}: empty query; remove the key to use the default"
            ));
        }
    }

    let mut custom_signals = Vec::new();
    for (i, c) in raw.custom_signals.into_iter().enumerate() {
        let at = format!("custom_signals[{i}]");
        let name = c.name.unwrap_or_default();
        if !valid_signal_name(&name) {
            p.push(format!("{at}.name: `{name}` must be a metric-style name (letters, digits, `_`, not starting with a digit)"));
        } else if custom_signals.iter().any(|s: &CustomSignal| s.name == name)
            || ["cpu", "memory", "pending_pods", "nodes"].contains(&name.as_str())
        {
            p.push(format!(
                "{at}.name: `{name}` is used twice (or is a built-in signal); names must be unique"
            ));
        }
        let query = c.query.unwrap_or_default();
        if query.trim().is_empty() {
            p.push(format!(
                "{at}.query: required; the PromQL that returns one number"
            ));
        }
        match (c.scale_up_above, c.scale_down_below) {
            (None, None) => p.push(format!(
                "{at}: set scale_up_above and/or scale_down_below, or the signal does nothing"
            )),
            (Some(up), Some(down)) if down >= up => p.push(format!(
                "{at}: scale_down_below ({down}) must be lower than scale_up_above ({up}), or the group would flap"
            )),
            _ => {}
        }
        custom_signals.push(CustomSignal {
            name,
            query,
            scale_up_above: c.scale_up_above,
            scale_down_below: c.scale_down_below,
        });
    }

    let table = match raw.state.table {
        Some(t) if valid_table(&t) => t,
        Some(t) => {
            p.push(format!("state.table: `{t}` is not a DynamoDB table name (3–255 of letters, digits, `_`, `-`, `.`)"));
            t
        }
        None if controller => {
            p.push("state.table: required; the DynamoDB table (keys cluster_id + record) that holds the lease, state and history".into());
            String::new()
        }
        None => fallback.state.table.clone(),
    };
    let lease_ttl = raw.state.lease_ttl.0;
    if lease_ttl < interval * 2 {
        p.push(format!(
            "state.lease_ttl: {} must be at least twice interval ({}) so a healthy holder renews it in time",
            smartscale_common::duration::format(lease_ttl),
            smartscale_common::duration::format(interval)
        ));
    }
    if raw.state.history_retention.0 < Duration::from_secs(3600) {
        p.push("state.history_retention: keep history for at least 1h".into());
    }

    let mut node_groups: Vec<NodeGroup> = Vec::new();
    if raw.node_groups.is_empty() && controller {
        p.push("node_groups: required; list at least one worker Auto Scaling group (asg_name, min, max)".into());
    }
    for (i, g) in raw.node_groups.into_iter().enumerate() {
        let at = format!("node_groups[{i}]");
        let asg_name = g.asg_name.unwrap_or_default();
        if asg_name.trim().is_empty() || asg_name.len() > 255 {
            p.push(format!(
                "{at}.asg_name: required; the worker Auto Scaling group's name (1–255 characters)"
            ));
        } else if node_groups.iter().any(|n| n.asg_name == asg_name) {
            p.push(format!(
                "{at}.asg_name: `{asg_name}` is listed twice; each group once"
            ));
        }
        let size = |v: Option<i64>, key: &str, p: &mut Vec<String>| -> u32 {
            match v {
                None => {
                    p.push(format!("{at}.{key}: required; a whole number of nodes ≥ 0"));
                    0
                }
                Some(n) if !(0..=10_000).contains(&n) => {
                    p.push(format!(
                        "{at}.{key}: {n} is out of range; use 0–10000 nodes"
                    ));
                    0
                }
                Some(n) => n as u32,
            }
        };
        let (min, max) = (size(g.min, "min", p), size(g.max, "max", p));
        if min > max {
            p.push(format!(
                "{at}: min ({min}) is greater than max ({max}); set min ≤ max"
            ));
        }
        if g.max == Some(0) {
            p.push(format!(
                "{at}.max: 0 leaves nothing to scale; use at least 1"
            ));
        }
        let allocatable = g.allocatable.map(|a| {
            let cpu = a.cpu.unwrap_or(0.0);
            let memory = a.memory_gib.unwrap_or(0.0);
            if !(cpu > 0.0 && cpu.is_finite() && memory > 0.0 && memory.is_finite()) {
                p.push(format!("{at}.allocatable: cpu (cores) and memory_gib must both be positive numbers, e.g. {{cpu: 2, memory_gib: 4}}"));
            }
            Resources { cpu, memory }
        });
        if let Some(price) = g.hourly_price
            && !(price >= 0.0 && price.is_finite())
        {
            p.push(format!(
                "{at}.hourly_price: {price} must be a price in dollars per hour ≥ 0"
            ));
        }
        let priority = match g.priority {
            None => 0,
            Some(v) if i32::try_from(v).is_ok() => v as i32,
            Some(v) => {
                p.push(format!(
                    "{at}.priority: {v} is out of range; use an integer between -2147483648 and 2147483647 (higher wins with expander: priority)"
                ));
                0
            }
        };
        node_groups.push(NodeGroup {
            priority,
            asg_name,
            min,
            max,
            instance_type: g.instance_type,
            allocatable,
            hourly_price: g.hourly_price,
            suspend_az_rebalance: g.suspend_az_rebalance.unwrap_or(true),
            protect_from_scale_in: g.protect_from_scale_in.unwrap_or(true),
        });
    }

    let rp = raw.policy;
    for (key, v) in [
        ("policy.scale_up.cpu_above", rp.scale_up.cpu_above),
        ("policy.scale_up.memory_above", rp.scale_up.memory_above),
        ("policy.scale_down.cpu_below", rp.scale_down.cpu_below),
        ("policy.scale_down.memory_below", rp.scale_down.memory_below),
    ] {
        if !(0.0..=100.0).contains(&v) {
            p.push(format!("{key}: {v} is a percentage; use 0–100"));
        }
    }
    if rp.scale_down.cpu_below >= rp.scale_up.cpu_above {
        p.push(format!(
            "policy: scale_down.cpu_below ({}) must be lower than scale_up.cpu_above ({}), or the group would flap",
            rp.scale_down.cpu_below, rp.scale_up.cpu_above
        ));
    }
    if rp.scale_down.memory_below >= rp.scale_up.memory_above {
        p.push(format!(
            "policy: scale_down.memory_below ({}) must be lower than scale_up.memory_above ({}), or the group would flap",
            rp.scale_down.memory_below, rp.scale_up.memory_above
        ));
    }
    if !(1..=100).contains(&rp.scale_up.cpu_checks) {
        p.push(format!(
            "policy.scale_up.cpu_checks: {} must be 1–100 consecutive checks",
            rp.scale_up.cpu_checks
        ));
    }
    if rp.backoff.initial.0 < Duration::from_secs(1) || rp.backoff.max.0 < rp.backoff.initial.0 {
        p.push(format!(
            "policy.backoff: initial ({:?}) must be at least 1s and max ({:?}) at least initial",
            rp.backoff.initial.0, rp.backoff.max.0
        ));
    }
    if rp.replace_unready_after.0 < Duration::from_secs(10) {
        p.push("policy.replace_unready_after: give a NotReady node at least 10s before replacing it (default 20m; the node lifecycle controller alone needs 50s to notice)".into());
    }
    if rp.max_node_provision_time.0 < Duration::from_secs(5) {
        p.push("policy.max_node_provision_time: allow nodes at least 5s to boot (EC2 needs minutes; default 15m)".into());
    }
    let expander = rp.scale_up.expander.parse().unwrap_or_else(|_| {
        p.push(format!(
            "policy.scale_up.expander: `{}` is not one of least-waste (the default), priority (node_groups[].priority, higher wins), price",
            rp.scale_up.expander
        ));
        crate::capacity::Expander::default()
    });
    let capacity = super::CapacityConfig {
        expander,
        scale_down: crate::capacity::ScaleDownConfig {
            skip_nodes_with_local_storage: rp.scale_down.skip_nodes_with_local_storage,
            skip_nodes_with_system_pods: rp.scale_down.skip_nodes_with_system_pods,
            skip_nodes_with_custom_controller_pods: rp
                .scale_down
                .skip_nodes_with_custom_controller_pods,
        },
    };
    let budget = &rp.scale_down.budget;
    if budget.nodes == Some(0) {
        p.push("policy.scale_down.budget.nodes: 0 would forbid every scale-down; use at least 1, or leave it out for no limit (set consolidate: false to stop consolidation)".to_string());
    }
    if let Some(pct) = budget.percent
        && !(pct > 0.0 && pct <= 100.0)
    {
        p.push(format!(
            "policy.scale_down.budget.percent: {pct} must be above 0 and at most 100 (a share of the group's nodes)"
        ));
    }
    if budget.window.0.is_zero() {
        p.push("policy.scale_down.budget.window: must be longer than 0s; e.g. 1h".to_string());
    }
    let lead = rp.forecast.lead.0;
    if !(Duration::from_secs(30)..=Duration::from_secs(3600)).contains(&lead) {
        p.push(format!(
            "policy.forecast.lead: {}s is outside 30s–1h; use a node's boot time plus one interval, e.g. 2m",
            lead.as_secs()
        ));
    }
    let policy = PolicyConfig {
        cpu_above: rp.scale_up.cpu_above,
        cpu_checks: rp.scale_up.cpu_checks.clamp(1, 100) as u32,
        memory_above: rp.scale_up.memory_above,
        pending_pods: rp.scale_up.pending_pods,
        pending_pods_binpack: rp.scale_up.pending_pods_binpack,
        cooldown_applies_to_pending: rp.cooldown.applies_to_pending_pods,
        cpu_below: rp.scale_down.cpu_below,
        memory_below: rp.scale_down.memory_below,
        consolidate: rp.scale_down.consolidate,
        sustained: rp.scale_down.sustained.0,
        after_scale_up: rp.cooldown.after_scale_up.0,
        after_scale_down: rp.cooldown.after_scale_down.0,
        max_node_provision_time: rp.max_node_provision_time.0,
        replace_unready_after: rp.replace_unready_after.0,
        backoff_initial: rp.backoff.initial.0,
        backoff_max: rp.backoff.max.0,
        check_interval: interval,
        consolidate_after: rp.scale_down.consolidate_after.0,
        disruption_budget: crate::policy::DisruptionBudget {
            nodes: budget.nodes,
            percent: budget.percent,
            window: budget.window.0,
        },
        forecast: crate::policy::forecast::ForecastConfig {
            enabled: rp.forecast.enabled,
            lead,
        },
    };

    let listen = match raw.api.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            p.push(format!(
                "api.listen: `{}` is not an address:port; e.g. 127.0.0.1:8080",
                raw.api.listen
            ));
            fallback.api.listen
        }
    };
    let webhook_url =
        raw.notifications
            .webhook_url
            .as_deref()
            .and_then(|u| match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                _ => {
                    p.push(format!(
                        "notifications.webhook_url: `{u}` is not an http(s) URL"
                    ));
                    None
                }
            });
    let sns_topic_arn = raw.notifications.sns_topic_arn.filter(|arn| {
        let ok = valid_sns_topic_arn(arn);
        if !ok {
            p.push(format!(
                "notifications.sns_topic_arn: `{arn}` is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"
            ));
        }
        ok
    });
    let namespace = raw.cloudwatch.namespace;
    if !valid_cloudwatch_namespace(&namespace) {
        p.push(format!(
            "cloudwatch.namespace: `{namespace}` must be 1–255 printable ASCII characters and not start with `AWS/` (default SmartScale/Autoscaler)"
        ));
    }
    let refresh = raw.prices.refresh.0;
    if refresh < Duration::from_secs(60) {
        p.push(format!(
            "prices.refresh: {} is too short: spot prices change at most every few minutes and every lookup is an API call; use 1m or more (default 1h)",
            smartscale_common::duration::format(refresh)
        ));
    }
    if raw.notifications.error_threshold < 1 {
        p.push("notifications.error_threshold: must be at least 1".into());
    }

    let sim = &raw.simulate;
    for (key, ok) in [
        (
            "simulate.allocatable",
            sim.allocatable.cpu > 0.0 && sim.allocatable.memory > 0.0,
        ),
        (
            "simulate.pod",
            sim.pod.cpu > 0.0 && sim.pod.memory > 0.0 && sim.pod.fits_in(sim.allocatable),
        ),
        (
            "simulate.boot_time_s",
            sim.boot_time_s > 0 && sim.boot_jitter_s >= 0 && sim.boot_jitter_s < sim.boot_time_s,
        ),
        ("simulate.drain_time_s", sim.drain_time_s >= 0),
        (
            "simulate.scrape_interval_s",
            sim.scrape_interval_s > 0 && sim.interval_s > 0,
        ),
        (
            "simulate.usage_ratio",
            sim.usage_ratio > 0.0 && sim.usage_ratio <= 1.0,
        ),
        ("simulate.spot_share", (0.0..=1.0).contains(&sim.spot_share)),
        ("simulate.min", sim.min <= sim.max && sim.max > 0),
    ] {
        if !ok {
            p.push(format!(
                "{key}: out of range (see README \"Digital twin\" for valid values)"
            ));
        }
    }

    fallback.cluster_id = cluster_id;
    Config {
        cluster_id: fallback.cluster_id,
        interval,
        dry_run: raw.dry_run,
        log_format: raw.log_format,
        prometheus: PrometheusConfig {
            url: prom_url.unwrap_or(fallback.prometheus.url),
            timeout,
            queries: raw.prometheus.queries,
        },
        custom_signals,
        state: StateConfig {
            table,
            lease_ttl,
            history_retention: raw.state.history_retention.0,
        },
        node_groups,
        policy,
        api: ApiConfig {
            listen,
            token_file: raw.api.token_file,
        },
        notifications: Notifications {
            webhook_url,
            sns_topic_arn,
            error_threshold: raw.notifications.error_threshold.clamp(1, 1000) as u32,
        },
        cloudwatch: CloudWatchConfig {
            enabled: raw.cloudwatch.enabled,
            namespace,
        },
        prices: super::PricesConfig {
            lookup: raw.prices.lookup,
            refresh: refresh.max(Duration::from_secs(60)),
        },
        capacity,
        simulate: raw.simulate,
        warnings: vec![],
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_table(s: &str) -> bool {
    (3..=255).contains(&s.len()) && valid_name(s, 255)
}

fn valid_signal_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `arn:<partition>:sns:<region>:<12-digit account>:<topic>` (topic: letters, digits, `-`, `_`,
/// up to 256; a FIFO topic ends in `.fifo`).
fn valid_sns_topic_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let [arn, partition, service, region, account, topic] = parts.as_slice() else {
        return false;
    };
    let topic = topic.strip_suffix(".fifo").unwrap_or(topic);
    *arn == "arn"
        && partition.starts_with("aws")
        && *service == "sns"
        && !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && (1..=256).contains(&topic.len())
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// CloudWatch's rule: 1–255 printable ASCII characters; `AWS/` is reserved for AWS.
fn valid_cloudwatch_namespace(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && !s.starts_with("AWS/")
}
