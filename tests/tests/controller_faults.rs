//! The controller against what the real Auto Scaling group and K3s do on their own: AZ
//! rebalancing, Nodes that outlive their instances, launches that fail, groups without the
//! terminate hook. Issue 11 turned these on.

use serde_json::json;
use smartscale_testworld::aws::{LaunchFailure, NextPrivateIp};
use smartscale_testworld::process::poll_until;
use smartscale_testworld::world::{World, WorldOptions, prometheus_at};
use std::collections::BTreeMap;
use std::time::Duration;

const FAST_DOWN: &str = "policy:\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n";

fn bounded(limit: u64) -> Duration {
    Duration::from_secs(limit)
}

/// Zone of each worker node, by node name.
async fn zones(w: &World) -> BTreeMap<String, String> {
    w.ready_workers()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| {
            let zone = n
                .metadata
                .labels
                .as_ref()?
                .get("topology.kubernetes.io/zone")?
                .clone();
            Some((n.metadata.name?, zone))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_down_in_a_two_zone_group_removes_exactly_the_chosen_victim() {
    tokio::time::timeout(bounded(180), async {
        // Three workers: two in zone a, one in zone b (the ASG balances launches).
        let w = World::start(WorldOptions {
            workers: 3,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(10.0, 20.0, 3).await.unwrap();
        let cfg = w.controller_config(prom.url(), FAST_DOWN).unwrap();
        let zones = zones(&w).await;
        let lone = zones
            .iter()
            .find(|(_, z)| zones.values().filter(|o| o == z).count() == 1)
            .map(|(n, _)| n.clone())
            .expect("one zone has a single worker");
        // The others carry more, so the lone worker is the least utilised and the victim.
        for (i, (node, _)) in zones.iter().filter(|(n, _)| **n != lone).enumerate() {
            w.create_pod(&format!("busy-{i}"), "600m", "256Mi", Some(node), json!({}))
                .await
                .unwrap();
        }
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        assert_eq!(d["action"], "scale_down", "{d}");
        let victim = d["victim"].as_str().unwrap().to_string();
        assert_eq!(victim, w.instance_of(&lone).await.unwrap());
        // With AZRebalance active, AWS now launches in the emptied zone and then terminates an
        // instance of its own choosing in the other. Wait until the group is steady again.
        let (_, instances) = poll_until("the group to settle", bounded(60), || async {
            let (desired, instances) = w.group().await?;
            let pending = instances.iter().any(|(_, s)| s.starts_with("Pending"));
            let serving = instances.iter().filter(|(_, s)| s == "InService").count() as u32;
            Ok((!pending && serving == desired).then_some((desired, instances)))
        })
        .await
        .unwrap();
        let gone: Vec<&String> = instances
            .iter()
            .filter(|(_, s)| s.starts_with("Terminat"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            gone,
            vec![&victim],
            "only the controller's victim leaves: {instances:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_without_the_terminate_hook_is_never_scaled_down() {
    tokio::time::timeout(bounded(120), async {
        let w = World::start(WorldOptions {
            workers: 2,
            terminate_hook: false,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(5.0, 10.0, 2).await.unwrap();
        let cfg = w.controller_config(prom.url(), FAST_DOWN).unwrap();
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        assert_ne!(
            d["action"], "scale_down",
            "its pods would die undrained: {d}"
        );
        assert!(
            d["reasons"].to_string().contains("terminate"),
            "the reason names the missing hook: {d}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_of_a_terminated_instance_is_deleted_and_its_name_joins_again() {
    tokio::time::timeout(bounded(180), async {
        let w = World::start(WorldOptions {
            workers: 2,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(5.0, 10.0, 2).await.unwrap();
        let cfg = w.controller_config(prom.url(), FAST_DOWN).unwrap();
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        assert_eq!(d["action"], "scale_down", "{d}");
        let victim = d["victim"].as_str().unwrap().to_string();
        let details = w.aws.instance_details(&victim).await.unwrap().unwrap();
        let name = smartscale_testworld::world::node_name(&details);
        // The agent drained it and answers the hook; the instance terminates, K3s keeps the Node.
        w.complete_termination(&victim).await.unwrap();
        poll_until("the instance to terminate", bounded(30), || async {
            let i = w.aws.instance(&victim).await?;
            Ok(i.filter(|i| i.ec2_state == "terminated").map(|_| ()))
        })
        .await
        .unwrap();
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(w.kube.clone());
        poll_until("the controller to delete the Node", bounded(60), || async {
            w.controller_once(&cfg, &[]).await?;
            Ok(nodes
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(()))
        })
        .await
        .expect("a ghost Node stays");
        // A new instance re-uses the private IP, hence the name: K3s lets it join.
        w.aws
            .set_next_private_ip(&NextPrivateIp {
                ip: details.private_ip.clone().unwrap(),
                group: Some(w.asg_name.clone()),
                ..NextPrivateIp::default()
            })
            .await
            .unwrap();
        w.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&w.asg_name)
            .desired_capacity(2)
            .send()
            .await
            .unwrap();
        poll_until(
            "the new instance's node, same name, Ready",
            bounded(60),
            || async {
                let n = nodes.get_opt(&name).await.ok().flatten();
                Ok(n.filter(smartscale_testworld::world::is_ready).map(|_| ()))
            },
        )
        .await
        .unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn launches_that_keep_failing_send_pending_pods_to_the_other_group() {
    tokio::time::timeout(bounded(180), async {
        let w = World::start(WorldOptions { workers: 1, ..WorldOptions::default() }).await.unwrap();
        // A spot group listed first, whose every launch fails for lack of capacity.
        w.create_group("spot-workers", 0, 5, true).await.unwrap();
        w.aws
            .add_launch_failure(&LaunchFailure {
                group: Some("spot-workers".into()),
                ..LaunchFailure::default()
            })
            .await
            .unwrap();
        let prom = prometheus_at(50.0, 40.0, 1).await.unwrap();
        let extra = "policy: {max_node_provision_time: 5s}\n";
        let path = w.dir.path().join("two-groups.yaml");
        let text = format!(
            "cluster_id: e2e\ninterval: 1s\nprometheus:\n  url: {}\n  timeout: 500ms\nstate:\n  table: {}\n  lease_ttl: 3s\nnode_groups:\n  - asg_name: spot-workers\n    min: 0\n    max: 5\n  - asg_name: {}\n    min: 1\n    max: 5\n{extra}",
            prom.url(),
            w.table,
            w.asg_name
        );
        std::fs::write(&path, text).unwrap();
        for i in 0..2 {
            w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({})).await.unwrap();
        }
        poll_until("the on-demand group to grow for the pending pods", bounded(90), || async {
            w.controller_once(&path, &[]).await?;
            let (desired, _) = w.group().await?;
            Ok((desired >= 2).then_some(()))
        })
        .await
        .expect("capacity that never comes mutes the pending pods");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_desired_capacity_below_the_live_count_terminates_no_instance() {
    tokio::time::timeout(bounded(120), async {
        let w = World::start(WorldOptions {
            workers: 3,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(50.0, 40.0, 3).await.unwrap();
        let cfg = w.controller_config(prom.url(), "").unwrap();
        // One cycle protects the group's instances from scale-in.
        w.controller_once(&cfg, &[]).await.unwrap();
        // A late SetDesiredCapacity (a paused old leader's, an operator's) lowers desired...
        w.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&w.asg_name)
            .desired_capacity(1)
            .send()
            .await
            .unwrap();
        let (desired, instances) = w.group().await.unwrap();
        assert_eq!(desired, 1);
        // ...but AWS may not choose victims among protected instances: all three stay.
        assert_eq!(
            instances.iter().filter(|(_, s)| s == "InService").count(),
            3,
            "{instances:?}"
        );
        assert!(
            w.activities()
                .await
                .unwrap()
                .iter()
                .all(|a| !a.starts_with("Terminating"))
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_survives_all_replicas_down_past_its_ttl_and_its_token_keeps_rising() {
    tokio::time::timeout(bounded(120), async {
        let w = World::start(WorldOptions {
            workers: 1,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(50.0, 40.0, 1).await.unwrap();
        let port = smartscale_testworld::process::free_port().unwrap();
        let cfg = w
            .controller_config(
                prom.url(),
                &format!("api: {{listen: '127.0.0.1:{port}'}}\n"),
            )
            .unwrap();
        // A replica that dies holding the lease (SIGKILL: no hand-back).
        let mut run = smartscale_testworld::world::product_command(&w, "smartscale-controller")
            .unwrap()
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .spawn()
            .unwrap();
        let lease = || async {
            let out = w
                .dynamodb
                .get_item()
                .table_name(&w.table)
                .key(
                    "cluster_id",
                    aws_sdk_dynamodb::types::AttributeValue::S("e2e".into()),
                )
                .key(
                    "record",
                    aws_sdk_dynamodb::types::AttributeValue::S("lease".into()),
                )
                .send()
                .await
                .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
            Ok(out.item().cloned())
        };
        let num =
            |item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
             k: &str| {
                item.get(k)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
        let held = poll_until("the lease taken", bounded(30), || async {
            Ok(lease().await?.filter(|i| num(i, "fencing_token") >= 1.0))
        })
        .await
        .unwrap();
        run.kill().await.unwrap();
        let token = num(&held, "fencing_token");
        // Everyone is down for longer than the TTL; the model deletes expired items by TTL.
        poll_until(
            "the lease expired for more than a second",
            bounded(30),
            || async {
                let item = lease().await?.expect("the lease record is never deleted");
                let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
                Ok((now > num(&item, "lease_expires_at") + 1.0).then_some(()))
            },
        )
        .await
        .unwrap();
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        assert_eq!(
            d["fencing_token"].as_f64(),
            Some(token + 1.0),
            "the token continues from the old lease, never restarts at 1: {d}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_not_ready_past_the_limit_is_replaced_through_the_terminate_hook() {
    tokio::time::timeout(bounded(180), async {
        let w = World::start(WorldOptions {
            workers: 3,
            node_monitor_grace_period: Duration::from_secs(6),
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus_at(50.0, 40.0, 3).await.unwrap();
        let cfg = w
            .controller_config(prom.url(), "policy: {replace_unready_after: 10s}\n")
            .unwrap();
        // A cycle sees every node Ready (the controller remembers they were).
        w.controller_once(&cfg, &[]).await.unwrap();
        let workers = w.ready_workers().await.unwrap();
        let broken = workers[0].metadata.name.clone().unwrap();
        let instance = w.instance_of(&broken).await.unwrap();
        // The machine hangs: its kubelet goes silent; the real node lifecycle controller notices.
        assert!(w.k3s.stop_kubelet(&broken));
        let d = poll_until("the broken node replaced", bounded(90), || async {
            let d = w.controller_once(&cfg, &[]).await?;
            Ok(d["reasons"].to_string().contains("replacing").then_some(d))
        })
        .await
        .unwrap();
        assert!(d["reasons"].to_string().contains(&broken), "{d}");
        let (desired, instances) = w.group().await.unwrap();
        assert_eq!(desired, 3, "desired kept: the ASG launches a replacement");
        let state = instances
            .iter()
            .find(|(id, _)| *id == instance)
            .map(|(_, s)| s.as_str());
        assert_eq!(
            state,
            Some("Terminating:Wait"),
            "through the terminate hook: {instances:?}"
        );
    })
    .await
    .expect("test timed out");
}
