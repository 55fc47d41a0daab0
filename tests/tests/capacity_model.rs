//! The controller's capacity model against the real kube-scheduler: what it calls removable must
//! be reschedulable, what it grows for must fit on the node it adds. Both failed with the
//! requests-only fit checks the policy had before the capacity model.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use smartscale_testworld::process::poll_until;
use smartscale_testworld::world::{World, WorldOptions, prometheus_at};
use std::time::Duration;

const FAST_DOWN: &str = "policy:\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n";

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("fixture")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_no_new_node_can_take_never_grows_the_group() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions { workers: 1, ..WorldOptions::default() }).await.unwrap();
        // 200m of DaemonSet on every worker leaves 1.8 CPU of a 2-CPU node.
        let ds: DaemonSet = typed(json!({
            "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "a", "image": "agent",
                                           "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}}]}}}
        }));
        Api::<DaemonSet>::namespaced(w.kube.clone(), "kube-system")
            .create(&PostParams::default(), &ds)
            .await
            .unwrap();
        // The DaemonSet's pod runs before the wide pod exists (else the scheduler may place
        // the wide pod first and leave the DaemonSet's pod pending instead).
        poll_until("the DaemonSet's pod running", Duration::from_secs(30), || async {
            let pods = Api::<Pod>::namespaced(w.kube.clone(), "kube-system")
                .list(&kube::api::ListParams::default().labels("app=agent"))
                .await
                .ok();
            Ok(pods
                .is_some_and(|l| {
                    l.items.iter().any(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                })
                .then_some(()))
        })
        .await
        .unwrap();
        w.create_pod("wide", "1900m", "512Mi", None, json!({})).await.unwrap();
        poll_until("the pod unschedulable", Duration::from_secs(20), || async {
            Ok((w.unschedulable_pods().await? == 1).then_some(()))
        })
        .await
        .unwrap();
        let prom = prometheus_at(20.0, 20.0, 1).await.unwrap();
        let cfg = w.controller_config(prom.url(), "").unwrap();
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        assert_ne!(d["action"], "scale_up", "a new node would carry the DaemonSet too: {d}");
        assert!(d["reasons"].to_string().contains("wide"), "the unhelpable pod is reported: {d}");
        // And `kubectl describe pod wide` says why, as cluster-autoscaler's event does.
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.kube.clone(), "default")
            .list(&Default::default())
            .await
            .unwrap();
        let on_wide: Vec<_> = events
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("wide"))
            .filter(|e| e.reporting_controller.as_deref() == Some("smartscale-controller"))
            .collect();
        assert_eq!(on_wide.len(), 1, "{:?}", events.items);
        assert_eq!(on_wide[0].reason.as_deref(), Some("NotTriggerScaleUp"));
        let note = on_wide[0].note.clone().unwrap_or_default();
        assert!(note.starts_with("pod didn't trigger scale-up: smartscale-workers: "), "{note}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_holding_a_local_volume_is_not_the_victim() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions { workers: 2, ..WorldOptions::default() }).await.unwrap();
        let workers: Vec<String> = w
            .ready_workers()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let (pinned, other) = (&workers[0], &workers[1]);
        // A local PersistentVolume on `pinned` (what K3s's local-path provisioner creates), a
        // claim bound to it and a small pod using it: the scheduler can only place it there.
        let pv: PersistentVolume = typed(json!({
            "metadata": {"name": "data-0"},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "",
                "local": {"path": "/var/lib/rancher/k3s/storage/data-0"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [pinned]}]}]}}
            }
        }));
        Api::<PersistentVolume>::all(w.kube.clone()).create(&PostParams::default(), &pv).await.unwrap();
        let pvc: PersistentVolumeClaim = typed(json!({
            "metadata": {"name": "data-0", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "data-0",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }));
        Api::<PersistentVolumeClaim>::namespaced(w.kube.clone(), "default")
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap();
        let pod: Pod = typed(json!({
            "metadata": {"name": "db-0", "namespace": "default", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "postgres",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}]}
        }));
        Api::<Pod>::namespaced(w.kube.clone(), "default").create(&PostParams::default(), &pod).await.unwrap();
        // The other worker carries more, so by requests alone `pinned` is the victim.
        w.create_deployment("web", 1, "400m", "256Mi", Some(other)).await.unwrap();
        poll_until("db-0 running on its volume's node", Duration::from_secs(30), || async {
            let p = Api::<Pod>::namespaced(w.kube.clone(), "default").get("db-0").await.ok();
            Ok(p.and_then(|p| p.spec?.node_name).filter(|n| n == pinned).map(|_| ()))
        })
        .await
        .unwrap();
        let prom = prometheus_at(5.0, 10.0, 2).await.unwrap();
        let cfg = w.controller_config(prom.url(), FAST_DOWN).unwrap();
        let d = w.controller_once(&cfg, &[]).await.unwrap();
        let pinned_instance = w.instance_of(pinned).await.unwrap();
        assert_ne!(d["victim"].as_str(), Some(pinned_instance.as_str()), "db-0 would be stranded: {d}");
    })
    .await
    .expect("test timed out");
}
