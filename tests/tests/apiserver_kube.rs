//! The fake Kubernetes API server driven by the real `kube` client through a kubeconfig: cordon,
//! field and label selectors, evictions against PodDisruptionBudgets, watches, strict decoding,
//! error statuses, the simulated scheduler/kubelet/DaemonSet controller, and the Node authorizer.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use smartscale_testworld::apiserver::{ApiServerOptions, FakeApiServer};

/// Every test is bounded by this, so a hanging expectation fails instead of hanging CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `eventually` waits.
const WAIT: Duration = Duration::from_secs(15);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test did not finish within its time limit");
}

/// Poll `probe` until it returns `Some`, failing after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn client_for(server: &FakeApiServer, dir: &Path, token: Option<&str>) -> kube::Client {
    let path = dir.join(format!("kubeconfig-{}", token.unwrap_or("anonymous")));
    server
        .write_kubeconfig(&path, token)
        .expect("write kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config from kubeconfig");
    // kube 5 retries 429 answers by default (up to 15 times, exponential backoff from 5 ms to
    // 1000 s), so a refused eviction would only surface minutes later. Tests want the answer.
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

async fn start(opts: ApiServerOptions) -> (FakeApiServer, kube::Client, tempfile::TempDir) {
    let server = FakeApiServer::start(opts)
        .await
        .expect("start fake apiserver");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&server, dir.path(), None).await;
    (server, client, dir)
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object decodes")
}

fn node(name: &str, cpu: &str) -> Node {
    typed(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{name}")},
        "status": {"capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                   "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}
    }))
}

/// A pod owned by a ReplicaSet (so drains treat it as replicated), short grace period.
fn pod(name: &str, app: &str, node: Option<&str>, cpu: &str) -> Pod {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "registry.example/app:1",
                        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
    });
    if let Some(node) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    typed(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": spec
    }))
}

async fn create_nodes(client: &kube::Client, names: &[&str]) {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in names {
        nodes
            .create(&PostParams::default(), &node(name, "2"))
            .await
            .expect("create node");
    }
}

async fn wait_running(pods: &Api<Pod>, names: &[&str]) {
    for name in names {
        eventually(&format!("pod {name} Running"), || async {
            let pod = pods.get(name).await.ok()?;
            (pod.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

#[tokio::test]
async fn cordon_and_select_pods_of_a_node() {
    bounded(async {
        let (server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1", "n2"]).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for (name, node) in [("a1", "n1"), ("a2", "n1"), ("b1", "n2")] {
            pods.create(
                &PostParams::default(),
                &pod(name, "web", Some(node), "100m"),
            )
            .await
            .expect("create pod");
        }
        wait_running(&pods, &["a1", "a2", "b1"]).await;

        let names = |list: Vec<Pod>| -> BTreeSet<String> {
            list.into_iter().filter_map(|p| p.metadata.name).collect()
        };
        let on_n1 = pods
            .list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .expect("list");
        assert_eq!(
            names(on_n1.items),
            BTreeSet::from(["a1".to_string(), "a2".to_string()])
        );
        let all: Api<Pod> = Api::all(client.clone());
        let running_n2 = all
            .list(&ListParams::default().fields("spec.nodeName==n2,status.phase=Running"))
            .await
            .expect("list all namespaces");
        assert_eq!(names(running_n2.items), BTreeSet::from(["b1".to_string()]));
        let not_running = all
            .list(&ListParams::default().fields("status.phase!=Running"))
            .await
            .expect("list");
        assert!(not_running.items.is_empty());
        let by_label = pods
            .list(&ListParams::default().labels("app in (web,db),app!=db"))
            .await
            .expect("list");
        assert_eq!(by_label.items.len(), 3);
        let status = api_error(
            pods.list(&ListParams::default().fields("spec.bogus=1"))
                .await,
        );
        assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));

        // Cordon as kubectl does: a strategic merge patch.
        let cordoned = nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .expect("cordon");
        assert_eq!(cordoned.spec.and_then(|s| s.unschedulable), Some(true));
        eventually("the unschedulable taint", || async {
            let node = nodes.get("n1").await.ok()?;
            node.spec?
                .taints?
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unschedulable")
                .then_some(())
        })
        .await;
        let cordoned_list = nodes
            .list(&ListParams::default().fields("spec.unschedulable=true"))
            .await
            .expect("list");
        assert_eq!(cordoned_list.items.len(), 1);

        // A pod that only fits n1 now stays Pending with the scheduler's reason.
        pods.create(
            &PostParams::default(),
            &pod("c1", "web", Some("n1"), "100m"),
        )
        .await
        .expect("create");
        let message = eventually("c1 unschedulable", || async {
            let pod = pods.get("c1").await.ok()?;
            let condition = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (condition.status == "False" && condition.reason.as_deref() == Some("Unschedulable"))
                .then_some(condition.message.unwrap_or_default())
        })
        .await;
        assert!(
            message.contains("1 node(s) were unschedulable"),
            "{message}"
        );
        assert!(
            message.contains("1 node(s) didn't match Pod's node affinity/selector"),
            "{message}"
        );

        // Uncordon with a merge patch; c1 is bound to n1. A JSON patch adds a label.
        nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": null}})),
            )
            .await
            .expect("uncordon");
        wait_running(&pods, &["c1"]).await;
        assert_eq!(
            node_of(&pods.get("c1").await.expect("get")).as_deref(),
            Some("n1")
        );
        let patch: json_patch::Patch =
            typed(json!([{"op": "add", "path": "/metadata/labels/zone", "value": "a"}]));
        let labelled = nodes
            .patch("n2", &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .expect("json patch");
        assert_eq!(
            labelled
                .metadata
                .labels
                .and_then(|l| l.get("zone").cloned())
                .as_deref(),
            Some("a")
        );
        assert_eq!(server.nodes().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn eviction_honours_the_disruption_budget() {
    bounded(async {
        let (server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1", "n2"]).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let cordon = |value: bool| Patch::Strategic(json!({"spec": {"unschedulable": value}}));
        nodes
            .patch("n2", &PatchParams::default(), &cordon(true))
            .await
            .expect("cordon n2");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["web-0", "web-1", "web-2"] {
            pods.create(&PostParams::default(), &pod(name, "web", None, "100m"))
                .await
                .expect("create");
        }
        wait_running(&pods, &["web-0", "web-1", "web-2"]).await;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        let budget: PodDisruptionBudget = typed(json!({
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
        }));
        pdbs.create(&PostParams::default(), &budget)
            .await
            .expect("create pdb");
        let allowed = |n: i32| {
            let pdbs = pdbs.clone();
            async move {
                let status = pdbs.get("web").await.ok()?.status?;
                (status.disruptions_allowed == n).then_some(status)
            }
        };
        let status = eventually("budget allows 1", || allowed(1)).await;
        assert_eq!(
            (
                status.current_healthy,
                status.desired_healthy,
                status.expected_pods
            ),
            (3, 2, 3)
        );

        pods.evict("web-0", &EvictParams::default())
            .await
            .expect("first eviction is allowed");
        let refused = api_error(pods.evict("web-1", &EvictParams::default()).await);
        assert_eq!(refused.code, 429);
        assert_eq!(refused.reason, "TooManyRequests");
        assert_eq!(
            refused.message,
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        let causes = refused.details.expect("details").causes;
        assert_eq!(causes[0].reason, "DisruptionBudget");
        assert_eq!(
            causes[0].message,
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );

        // The evicted pod terminates gracefully: first marked, then gone after its grace period.
        let evicted = pods
            .get("web-0")
            .await
            .expect("still there while terminating");
        assert!(evicted.metadata.deletion_timestamp.is_some());
        eventually("web-0 gone", || async {
            pods.get_opt("web-0").await.ok()?.is_none().then_some(())
        })
        .await;

        // A replacement becomes Ready on another node; the budget allows one disruption again.
        nodes
            .patch("n1", &PatchParams::default(), &cordon(true))
            .await
            .expect("cordon n1");
        nodes
            .patch("n2", &PatchParams::default(), &cordon(false))
            .await
            .expect("uncordon n2");
        pods.create(&PostParams::default(), &pod("web-3", "web", None, "100m"))
            .await
            .expect("replacement");
        wait_running(&pods, &["web-3"]).await;
        assert_eq!(
            node_of(&pods.get("web-3").await.expect("get")).as_deref(),
            Some("n2")
        );
        eventually("budget allows 1 again", || allowed(1)).await;
        pods.evict("web-1", &EvictParams::default())
            .await
            .expect("eviction allowed again");

        let missing = api_error(pods.evict("nope", &EvictParams::default()).await);
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
        assert_eq!(
            server.eviction_log(),
            vec![
                ("default/web-0".to_string(), 201),
                ("default/web-1".to_string(), 429),
                ("default/web-1".to_string(), 201),
                ("default/nope".to_string(), 404),
            ]
        );
        assert!(
            server.deletion_log().is_empty(),
            "evictions are not direct deletes"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_evictions_cannot_share_one_disruption() {
    bounded(async {
        let (server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1"]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["db-0", "db-1", "db-2"] {
            pods.create(&PostParams::default(), &pod(name, "db", None, "100m"))
                .await
                .expect("create");
        }
        wait_running(&pods, &["db-0", "db-1", "db-2"]).await;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        let budget: PodDisruptionBudget = typed(json!({
            "metadata": {"name": "db"},
            "spec": {"maxUnavailable": "33%", "selector": {"matchLabels": {"app": "db"}}}
        }));
        pdbs.create(&PostParams::default(), &budget)
            .await
            .expect("create pdb");
        eventually("budget allows 1", || async {
            (pdbs.get("db").await.ok()?.status?.disruptions_allowed == 1).then_some(())
        })
        .await;
        let params = EvictParams::default();
        let (a, b) = tokio::join!(pods.evict("db-0", &params), pods.evict("db-1", &params));
        let codes: BTreeSet<u16> = server
            .eviction_log()
            .into_iter()
            .map(|(_, code)| code)
            .collect();
        assert_eq!(codes, BTreeSet::from([201, 429]), "{a:?} {b:?}");
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1);
    })
    .await;
}

#[tokio::test]
async fn a_watcher_sees_a_pod_appear_and_go() {
    bounded(async {
        let (_server, client, _dir) = start(ApiServerOptions::default()).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        pods.create(&PostParams::default(), &pod("before", "w", None, "100m"))
            .await
            .expect("create");
        let mut events = watcher(pods.clone(), watcher::Config::default().labels("app=w")).boxed();
        let mut initial = Vec::new();
        loop {
            match events
                .next()
                .await
                .expect("stream open")
                .expect("watch event")
            {
                watcher::Event::InitApply(p) => initial.extend(p.metadata.name),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(initial, vec!["before".to_string()]);
        // Streaming lists (sendInitialEvents + the initial-events-end bookmark) work too.
        let streaming = watcher::Config::default().labels("app=w").streaming_lists();
        let mut streamed = watcher(pods.clone(), streaming).boxed();
        let mut seen = Vec::new();
        loop {
            match streamed
                .next()
                .await
                .expect("stream open")
                .expect("watch event")
            {
                watcher::Event::InitApply(p) => seen.extend(p.metadata.name),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(seen, vec!["before".to_string()]);

        pods.create(&PostParams::default(), &pod("watched", "w", None, "100m"))
            .await
            .expect("create");
        pods.create(&PostParams::default(), &pod("other", "x", None, "100m"))
            .await
            .expect("create");
        loop {
            match events
                .next()
                .await
                .expect("stream open")
                .expect("watch event")
            {
                watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("watched") => break,
                watcher::Event::Apply(p) => assert_ne!(p.metadata.name.as_deref(), Some("other")),
                _ => {}
            }
        }
        // No node: the pod is unscheduled, so even a graceful delete removes it at once.
        pods.delete("watched", &DeleteParams::default())
            .await
            .expect("delete");
        loop {
            if let watcher::Event::Delete(p) = events
                .next()
                .await
                .expect("stream open")
                .expect("watch event")
            {
                assert_eq!(p.metadata.name.as_deref(), Some("watched"));
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn graceful_deletion_and_the_kubelet() {
    bounded(async {
        let opts = ApiServerOptions {
            pod_start_delay: Duration::from_millis(300),
            ..Default::default()
        };
        let (server, client, _dir) = start(opts).await;
        create_nodes(&client, &["n1"]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let created = Instant::now();
        pods.create(&PostParams::default(), &pod("slow", "s", None, "100m"))
            .await
            .expect("create");
        wait_running(&pods, &["slow"]).await;
        assert!(
            created.elapsed() >= Duration::from_millis(300),
            "pod_start_delay honoured"
        );
        let running = pods.get("slow").await.expect("get");
        let status = running.status.expect("status");
        assert!(status.pod_ip.is_some() && status.host_ip.is_some());
        assert!(
            status
                .conditions
                .expect("conditions")
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );

        let started = Instant::now();
        let response = pods
            .delete("slow", &DeleteParams::default().grace_period(2))
            .await
            .expect("delete");
        let terminating = response
            .left()
            .expect("the pod is returned while it terminates");
        assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(2));
        eventually("slow gone", || async {
            pods.get_opt("slow").await.ok()?.is_none().then_some(())
        })
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "removed only after the grace period"
        );
        assert_eq!(server.deletion_log(), vec!["default/slow".to_string()]);

        // Grace period 0 removes at once.
        pods.create(&PostParams::default(), &pod("quick", "s", None, "100m"))
            .await
            .expect("create");
        wait_running(&pods, &["quick"]).await;
        pods.delete("quick", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete");
        assert!(pods.get_opt("quick").await.expect("get").is_none());
    })
    .await;
}

#[tokio::test]
async fn scheduler_packs_requests_and_reports_unschedulable_pods() {
    bounded(async {
        let (_server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1", "n2"]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["big-0", "big-1", "big-2"] {
            pods.create(&PostParams::default(), &pod(name, "big", None, "1500m"))
                .await
                .expect("create");
        }
        wait_running(&pods, &["big-0", "big-1"]).await;
        let mut nodes_used = BTreeSet::new();
        for name in ["big-0", "big-1"] {
            nodes_used.insert(node_of(&pods.get(name).await.expect("get")).expect("bound"));
        }
        assert_eq!(nodes_used.len(), 2, "spread over both nodes");
        let message = eventually("big-2 unschedulable", || async {
            let pod = pods.get("big-2").await.ok()?;
            let condition = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (condition.reason.as_deref() == Some("Unschedulable"))
                .then_some(condition.message.unwrap_or_default())
        })
        .await;
        assert!(
            message.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
            "{message}"
        );
        let pending = pods
            .get("big-2")
            .await
            .expect("get")
            .status
            .expect("status");
        assert_eq!(pending.phase.as_deref(), Some("Pending"));

        // Room appears: the pending pod is bound.
        pods.delete("big-0", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete");
        wait_running(&pods, &["big-2"]).await;
    })
    .await;
}

#[tokio::test]
async fn daemonsets_run_one_pod_per_node_and_nodes_go_not_ready() {
    bounded(async {
        let (server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1", "n2"]).await;
        let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
        let ds: DaemonSet = typed(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}
        }));
        sets.create(&PostParams::default(), &ds)
            .await
            .expect("create ds");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let ds_pods = || async {
            pods.list(&ListParams::default().labels("app=agent"))
                .await
                .map(|l| l.items)
                .unwrap_or_default()
        };
        eventually("a daemon pod Running on each node", || async {
            let list = ds_pods().await;
            let nodes: BTreeSet<String> = list
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(node_of)
                .collect();
            (nodes.len() == 2).then_some(())
        })
        .await;
        let one = ds_pods().await.remove(0);
        let owner = &one.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DaemonSet", "agent", Some(true))
        );
        let tolerations = one.spec.expect("spec").tolerations.expect("tolerations");
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
        );
        eventually("ds status", || async {
            let status = sets.get("agent").await.ok()?.status?;
            (status.desired_number_scheduled == 2 && status.number_ready == 2).then_some(())
        })
        .await;

        // A new node gets its daemon pod.
        create_nodes(&client, &["n3"]).await;
        eventually("daemon pod on n3", || async {
            ds_pods()
                .await
                .iter()
                .any(|p| node_of(p).as_deref() == Some("n3"))
                .then_some(())
        })
        .await;

        // A node whose kubelet stops turns NotReady, is tainted, and its pods lose Ready.
        server.set_node_ready("n3", false);
        let nodes: Api<Node> = Api::all(client.clone());
        eventually("n3 NotReady", || async {
            let node = nodes.get("n3").await.ok()?;
            let ready = node
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            let tainted = node
                .spec?
                .taints?
                .iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready");
            (ready.status == "False" && tainted).then_some(())
        })
        .await;
        eventually("daemon pod on n3 not Ready", || async {
            let pod = ds_pods()
                .await
                .into_iter()
                .find(|p| node_of(p).as_deref() == Some("n3"))?;
            let ready = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(())
        })
        .await;
        server.set_node_ready("n3", true);
        eventually("n3 Ready again", || async {
            let node = server
                .nodes()
                .into_iter()
                .find(|n| n.metadata.name.as_deref() == Some("n3"))?;
            let tainted = node.spec?.taints.is_some_and(|t| !t.is_empty());
            (!tainted).then_some(())
        })
        .await;

        // Deleting the node takes its pods with it (pod GC).
        nodes
            .delete("n3", &DeleteParams::default())
            .await
            .expect("delete node");
        eventually("no pods on n3", || async {
            (!server
                .pods()
                .iter()
                .any(|p| node_of(p).as_deref() == Some("n3")))
            .then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn nodes_of_terminated_instances_turn_not_ready() {
    bounded(async {
        // A stand-in for the AWS model's control endpoint.
        let state = std::sync::Arc::new(std::sync::Mutex::new("running"));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/_smartscale/instances",
            axum::routing::get(move || {
                let state = shared.clone();
                async move {
                    let ec2_state = *state.lock().unwrap_or_else(|e| e.into_inner());
                    axum::Json(json!([
                        {"instance_id": "i-n1", "ec2_state": ec2_state, "lifecycle_state": "InService"},
                        {"instance_id": "i-n2", "ec2_state": "running"}
                    ]))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let aws_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let opts = ApiServerOptions {
            aws_model_url: Some(aws_url),
            ..Default::default()
        };
        let (_server, client, _dir) = start(opts).await;
        create_nodes(&client, &["n1", "n2"]).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let ready = |name: &'static str| {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get(name).await.ok()?;
                Some(node.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?.status)
            }
        };
        eventually("n1 Ready", || async { (ready("n1").await? == "True").then_some(()) }).await;
        *state.lock().unwrap_or_else(|e| e.into_inner()) = "terminated";
        eventually("n1 NotReady", || async { (ready("n1").await? == "Unknown").then_some(()) }).await;
        assert_eq!(ready("n2").await.as_deref(), Some("True"));
    })
    .await;
}

/// Send a raw request through the kube client.
async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &str,
) -> Result<Value, kube::Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(body.as_bytes().to_vec())
        .expect("request");
    client.request::<Value>(request).await
}

#[tokio::test]
async fn bodies_are_decoded_strictly_and_errors_are_statuses() {
    bounded(async {
        let (server, client, _dir) = start(ApiServerOptions::default()).await;
        let pods_uri = "/api/v1/namespaces/default/pods";
        let with_unknown = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"u"},
            "spec":{"bogus":true,"containers":[{"name":"c","image":"i","colour":"red"}]}}"#;

        let strict = api_error(raw(&client, "POST", &format!("{pods_uri}?fieldValidation=Strict"), "application/json", with_unknown).await);
        assert_eq!((strict.code, strict.reason.as_str()), (400, "BadRequest"));
        assert_eq!(
            strict.message,
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.containers[0].colour\""
        );

        // The default (Warn) accepts the object without the unknown fields and says so in a Warning header.
        let response = reqwest::Client::new()
            .post(format!("{}{pods_uri}", server.url()))
            .header("content-type", "application/json")
            .body(with_unknown)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 201);
        let warnings: Vec<String> = response
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        assert_eq!(warnings, vec![r#"299 - "unknown field \"spec.bogus\"""#, r#"299 - "unknown field \"spec.containers[0].colour\"""#]);
        let created: Value = response.json().await.expect("json");
        assert!(created["spec"].get("bogus").is_none());

        let wrong_type = api_error(raw(&client, "POST", pods_uri, "application/json", r#"{"metadata":{"name":"w"},"spec":{"containers":"c"}}"#).await);
        assert_eq!(wrong_type.code, 400);
        assert!(wrong_type.message.starts_with("Pod in version \"v1\" cannot be handled as a Pod: spec.containers: invalid type"), "{}", wrong_type.message);
        let malformed = api_error(raw(&client, "POST", pods_uri, "application/json", "{not json").await);
        assert_eq!((malformed.code, malformed.reason.as_str()), (400, "BadRequest"));
        let nameless = api_error(raw(&client, "POST", pods_uri, "application/json", r#"{"spec":{"containers":[{"name":"c","image":"i"}]}}"#).await);
        assert_eq!((nameless.code, nameless.reason.as_str()), (422, "Invalid"));
        assert_eq!(nameless.details.expect("details").causes[0].field, "metadata.name");
        let no_image = api_error(raw(&client, "POST", pods_uri, "application/json", r#"{"metadata":{"name":"x"},"spec":{"containers":[{"name":"c"}]}}"#).await);
        assert_eq!(no_image.message, "Pod \"x\" is invalid: spec.containers[0].image: Required value");

        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let exists = api_error(pods.create(&PostParams::default(), &pod("u", "x", None, "1")).await);
        assert_eq!((exists.code, exists.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(exists.message, "pods \"u\" already exists");
        let missing = api_error(pods.get("missing").await);
        assert_eq!((missing.code, missing.reason.as_str(), missing.message.as_str()), (404, "NotFound", "pods \"missing\" not found"));
        let in_missing_ns: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
        let no_ns = api_error(in_missing_ns.create(&PostParams::default(), &pod("p", "x", None, "1")).await);
        assert_eq!((no_ns.code, no_ns.message.as_str()), (404, "namespaces \"nowhere\" not found"));

        // Optimistic concurrency: a PUT with a stale resourceVersion conflicts.
        let mut stale = pods.get("u").await.expect("get");
        pods.patch("u", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}}))).await.expect("patch");
        stale.metadata.labels = Some([("v".to_string(), "3".to_string())].into());
        let conflict = api_error(pods.replace("u", &PostParams::default(), &stale).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        // Pod specs are immutable.
        let mut current = pods.get("u").await.expect("get");
        if let Some(spec) = current.spec.as_mut() {
            spec.restart_policy = Some("Never".into());
        }
        let immutable = api_error(pods.replace("u", &PostParams::default(), &current).await);
        assert_eq!((immutable.code, immutable.reason.as_str()), (422, "Invalid"));

        let not_allowed = api_error(raw(&client, "DELETE", pods_uri, "application/json", "").await);
        assert_eq!((not_allowed.code, not_allowed.reason.as_str()), (405, "MethodNotAllowed"));
        let unknown = api_error(raw(&client, "GET", "/api/v1/widgets", "application/json", "").await);
        assert_eq!((unknown.code, unknown.reason.as_str()), (404, "NotFound"));
        let bad_patch = api_error(raw(&client, "PATCH", &format!("{pods_uri}/u"), "text/plain", "{}").await);
        assert_eq!(bad_patch.code, 415);
        let failed_test = api_error(raw(&client, "PATCH", &format!("{pods_uri}/u"), "application/json-patch+json", r#"[{"op":"test","path":"/metadata/name","value":"v"}]"#).await);
        assert_eq!(failed_test.code, 422);
    })
    .await;
}

#[tokio::test]
async fn a_kubelet_identity_is_limited_to_its_own_node() {
    bounded(async {
        let tokens = HashMap::from([
            ("admin-token".to_string(), "admin".to_string()),
            ("a-token".to_string(), "system:node:a".to_string()),
        ]);
        let server = FakeApiServer::start(ApiServerOptions { tokens, ..Default::default() }).await.expect("start");
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = client_for(&server, dir.path(), Some("admin-token")).await;
        let kubelet_a = client_for(&server, dir.path(), Some("a-token")).await;
        let anonymous = client_for(&server, dir.path(), None).await;

        let unauthenticated = api_error(Api::<Node>::all(anonymous).list(&ListParams::default()).await);
        assert_eq!((unauthenticated.code, unauthenticated.reason.as_str()), (401, "Unauthorized"));

        create_nodes(&admin, &["a", "b"]).await;
        let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        admin_pods.create(&PostParams::default(), &pod("on-a", "x", Some("a"), "100m")).await.expect("create");
        admin_pods.create(&PostParams::default(), &pod("on-b", "x", Some("b"), "100m")).await.expect("create");
        wait_running(&admin_pods, &["on-a", "on-b"]).await;

        let pods: Api<Pod> = Api::namespaced(kubelet_a.clone(), "default");
        let nodes: Api<Node> = Api::all(kubelet_a.clone());

        // Reads: only its own node and pods bound to it, lists only with the matching field selector.
        nodes.get("a").await.expect("own node");
        let other_node = api_error(nodes.get("b").await);
        assert_eq!(other_node.code, 403);
        assert_eq!(
            other_node.message,
            "nodes \"b\" is forbidden: User \"system:node:a\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'a' cannot read 'b', only its own Node object"
        );
        assert_eq!(api_error(nodes.list(&ListParams::default()).await).code, 403);
        assert_eq!(nodes.list(&ListParams::default().fields("metadata.name=a")).await.expect("own node list").items.len(), 1);
        let all_pods = api_error(pods.list(&ListParams::default()).await);
        assert!(all_pods.message.ends_with("can only list/watch pods with spec.nodeName field selector"), "{}", all_pods.message);
        let mine = pods.list(&ListParams::default().fields("spec.nodeName=a")).await.expect("own pods");
        assert_eq!(mine.items.len(), 1);
        assert_eq!(api_error(pods.get("on-b").await).code, 403);

        // Evictions and deletions only of its own pods.
        let foreign = api_error(pods.evict("on-b", &EvictParams::default()).await);
        assert_eq!((foreign.code, foreign.reason.as_str()), (403, "Forbidden"));
        assert_eq!(foreign.message, "pods \"on-b\" is forbidden: node a can only evict pods with spec.nodeName set to itself");
        assert_eq!(api_error(pods.delete("on-b", &DeleteParams::default()).await).code, 403);
        pods.evict("on-a", &EvictParams::default()).await.expect("own pod eviction");

        // Its own node: cordon yes, taints no, other nodes no.
        nodes
            .patch("a", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"unschedulable": true}})))
            .await
            .expect("a kubelet may cordon its own node");
        let taint = api_error(
            nodes
                .patch("a", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}})))
                .await,
        );
        assert_eq!(taint.message, "nodes \"a\" is forbidden: node \"a\" is not allowed to modify taints");
        let other = api_error(nodes.patch("b", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"unschedulable": true}}))).await);
        assert_eq!(other.code, 403);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(kubelet_a.clone(), "default");
        assert_eq!(api_error(pdbs.list(&ListParams::default()).await).code, 403);

        // Mirror pods: only bound to itself, owned by its Node.
        let node_uid = Api::<Node>::all(admin.clone()).get("a").await.expect("node").metadata.uid.expect("uid");
        let mirror: Pod = typed(json!({
            "metadata": {"name": "static-a", "annotations": {"kubernetes.io/config.mirror": "hash"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "a", "uid": node_uid, "controller": true}]},
            "spec": {"nodeName": "a", "containers": [{"name": "c", "image": "i"}]}
        }));
        pods.create(&PostParams::default(), &mirror).await.expect("mirror pod");
        let plain = api_error(pods.create(&PostParams::default(), &pod("plain", "x", None, "1")).await);
        assert_eq!(plain.code, 403);
        assert_eq!(server.eviction_log(), vec![("default/on-b".to_string(), 403), ("default/on-a".to_string(), 201)]);
    })
    .await;
}

#[tokio::test]
async fn kubeconfig_is_private_and_the_port_is_checked() {
    bounded(async {
        use std::os::unix::fs::PermissionsExt;
        let (server, _client, dir) = start(ApiServerOptions::default()).await;
        let path = dir.path().join("config");
        server
            .write_kubeconfig(&path, Some("secret"))
            .expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("parse");
        assert_eq!(
            kubeconfig.clusters[0]
                .cluster
                .as_ref()
                .and_then(|c| c.server.clone()),
            Some(server.url())
        );
        let port: u16 = server
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let taken = FakeApiServer::start(ApiServerOptions {
            port,
            ..Default::default()
        })
        .await;
        assert!(matches!(taken, Err(smartscale_testworld::Error::PortInUse(p)) if p == port));
    })
    .await;
}

#[tokio::test]
async fn status_subresource_apply_and_namespaces() {
    bounded(async {
        let (_server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1"]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        pods.create(&PostParams::default(), &pod("s", "s", None, "100m")).await.expect("create");
        wait_running(&pods, &["s"]).await;

        // Status written through the main resource is ignored; through /status it sticks.
        let ignored = pods
            .patch("s", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
            .await
            .expect("patch");
        assert_eq!(ignored.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let patched = pods
            .patch_status("s", &PatchParams::default(), &Patch::Strategic(not_ready))
            .await
            .expect("patch status");
        let conditions = patched.status.and_then(|s| s.conditions).expect("conditions");
        assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
        assert!(conditions.iter().any(|c| c.type_ == "ContainersReady" && c.status == "True"), "merged by type");

        // Server-side apply (approximated as a strategic merge) creates and then updates.
        let nodes: Api<Node> = Api::all(client.clone());
        let apply = PatchParams::apply("smartscale-test");
        let labels = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"smartscale.io/node-group": "workers"}}});
        let applied = nodes.patch("n1", &apply, &Patch::Apply(labels)).await.expect("apply");
        assert_eq!(
            applied.metadata.labels.and_then(|l| l.get("smartscale.io/node-group").cloned()).as_deref(),
            Some("workers")
        );
        let fresh = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n9"}});
        nodes.patch("n9", &apply, &Patch::Apply(fresh)).await.expect("apply creates");

        // kube-runtime's event recorder writes events.k8s.io/v1 Events.
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter { controller: "smartscale-test".into(), instance: None },
        );
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "Cordoned".into(),
            note: Some("node cordoned for scale-down".into()),
            action: "Cordon".into(),
            secondary: None,
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        recorder.publish(&event, &reference).await.expect("first event");
        recorder.publish(&event, &reference).await.expect("repeated event (a series patch)");
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
        let listed = events.list(&ListParams::default().fields("reason=Cordoned")).await.expect("list events");
        assert_eq!(listed.items.len(), 1);

        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let team: k8s_openapi::api::core::v1::Namespace = typed(json!({"metadata": {"name": "team-a"}}));
        namespaces.create(&PostParams::default(), &team).await.expect("create namespace");
        let names: BTreeSet<String> = namespaces
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        for expected in ["default", "kube-system", "kube-node-lease", "team-a"] {
            assert!(names.contains(expected), "{names:?}");
        }
    })
    .await;
}

/// kube 5's `Api::evict` sends `EvictParams::delete_options` under the key `delete_options`, which
/// is not a field of `policy/v1` Eviction (`deleteOptions`): a real server drops it as an unknown
/// field, and so does this one. A raw request with `deleteOptions` is honoured.
#[tokio::test]
async fn kube_evict_params_delete_options_are_dropped_like_on_a_real_server() {
    bounded(async {
        let (_server, client, _dir) = start(ApiServerOptions::default()).await;
        create_nodes(&client, &["n1"]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut slow = pod("slow", "e", None, "100m");
        if let Some(spec) = slow.spec.as_mut() {
            spec.termination_grace_period_seconds = Some(30);
        }
        pods.create(&PostParams::default(), &slow)
            .await
            .expect("create");
        let mut quick = slow.clone();
        quick.metadata.name = Some("quick".into());
        pods.create(&PostParams::default(), &quick)
            .await
            .expect("create");
        wait_running(&pods, &["slow", "quick"]).await;

        let params = EvictParams {
            delete_options: Some(DeleteParams::default().grace_period(0)),
            ..EvictParams::default()
        };
        pods.evict("slow", &params).await.expect("evicted");
        let slow = pods.get("slow").await.expect("still terminating");
        assert_eq!(
            slow.metadata.deletion_grace_period_seconds,
            Some(30),
            "grace period 0 was ignored"
        );

        let body = json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "quick", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 0}
        });
        let uri = "/api/v1/namespaces/default/pods/quick/eviction";
        raw(&client, "POST", uri, "application/json", &body.to_string())
            .await
            .expect("evicted");
        assert!(
            pods.get_opt("quick").await.expect("get").is_none(),
            "grace period 0 honoured"
        );
    })
    .await;
}
