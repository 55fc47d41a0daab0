//! The test world's Kubernetes: the real control plane with simulated kubelets behaves as a K3s
//! cluster does, checked with real clients (kube-rs and kubectl).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use smartscale_testworld::kubernetes::{
    ControlPlane, ControlPlaneOptions, JoinRefused, JoinRequest, K3sOptions, K3sServer, Kubeconfig,
};
use smartscale_testworld::process::poll_until;
use smartscale_testworld::world::{World, WorldOptions};
use std::time::{Duration, Instant};

fn join(name: &str, password: &str) -> JoinRequest {
    JoinRequest {
        token: K3sOptions::default().tokens[0].clone(),
        node_name: name.into(),
        node_password: password.into(),
        provider_id: Some(format!("aws:///us-east-1a/i-{name}")),
        labels: [(
            "topology.kubernetes.io/zone".to_string(),
            "us-east-1a".to_string(),
        )]
        .into(),
        taints: vec![],
        internal_ip: None,
        cpu: None,
        memory: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_on_simulated_nodes_of_a_real_control_plane() {
    let started = Instant::now();
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    eprintln!(
        "control plane ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    k3s.join(join("ip-10-0-1-10", "pw-a"))
        .await
        .expect("join a");
    k3s.join(join("ip-10-0-1-11", "pw-b"))
        .await
        .expect("join b");
    let admin = plane.admin().clone();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx",
                                        "resources": {"requests": {"cpu": "100m"}}}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let running = poll_until("3 web pods Running", Duration::from_secs(30), || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
        let n = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((n == 3).then_some(list))
    })
    .await
    .expect("pods run");
    for p in &running.items {
        assert!(
            p.spec
                .as_ref()
                .unwrap()
                .node_name
                .as_deref()
                .unwrap()
                .starts_with("ip-10-0-1-1")
        );
    }
    let node = Api::<Node>::all(admin.clone())
        .get("ip-10-0-1-10")
        .await
        .unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("k3s")
    );
    assert!(node.spec.unwrap().taints.unwrap_or_default().is_empty());
    // The same name with another password is refused while the Node exists.
    assert_eq!(
        k3s.join(join("ip-10-0-1-10", "pw-other"))
            .await
            .unwrap_err(),
        JoinRefused::NodePasswordRejected
    );
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    plane.shutdown().await;
    // With the API server gone every watch fails at once: the K3s server's loops must still stop.
    k3s.stop(Duration::from_secs(5))
        .await
        .expect("K3s loops stop after the control plane is gone");
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

async fn client_with(plane: &ControlPlane, kubeconfig: &Kubeconfig) -> kube::Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kubeconfig.write(&path).unwrap();
    smartscale_testworld::kubernetes::client_for(&path)
        .await
        .unwrap_or_else(|e| panic!("{e} ({})", plane.url))
}

/// The shipped RBAC (userdata/manifests/smartscale.yaml) is what the controller's ServiceAccount
/// may do, enforced by the real authorizer: reads of nodes, pods and budgets, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_service_account_gets_only_what_the_shipped_rbac_grants() {
    let w = World::start(WorldOptions {
        workers: 1,
        ..WorldOptions::default()
    })
    .await
    .expect("world");
    let controller = smartscale_testworld::kubernetes::client_for(&w.kubeconfig())
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(controller.clone());
    let listed = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    assert!(listed.items.len() >= 2, "the server and a worker");
    Api::<Pod>::all(controller.clone())
        .list(&ListParams::default())
        .await
        .expect("list pods");
    Api::<PodDisruptionBudget>::all(controller.clone())
        .list(&ListParams::default())
        .await
        .expect("list budgets");
    let worker = w.ready_workers().await.unwrap()[0]
        .metadata
        .name
        .clone()
        .unwrap();
    // It may cordon and taint a node (its chosen victim) and delete Nodes, not replace them.
    let cordon = json!({"spec": {"unschedulable": true}});
    nodes
        .patch(&worker, &PatchParams::default(), &Patch::Merge(&cordon))
        .await
        .expect("patch nodes is granted");
    let refused = nodes
        .replace(
            &worker,
            &PostParams::default(),
            &nodes.get(&worker).await.unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 403, "{refused}");
    let refused = Api::<Secret>::namespaced(controller.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 403, "{refused}");
    w.create_pod("p", "10m", "16Mi", None, json!({}))
        .await
        .unwrap();
    let refused = Api::<Pod>::namespaced(controller.clone(), "default")
        .evict("p", &EvictParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 403, "{refused}");
    // Real kubectl, an independent client, agrees.
    let can_i = |verb: &str, resource: &str| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(w.admin_kubeconfig())
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--as=system:serviceaccount:kube-system:smartscale-controller",
            ])
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can_i("watch", "pods"), "yes");
    assert_eq!(can_i("list", "poddisruptionbudgets.policy"), "yes");
    // What the capacity model reads, and its events on pods no new node would help.
    for kind in [
        "persistentvolumes",
        "persistentvolumeclaims",
        "storageclasses.storage.k8s.io",
        "daemonsets.apps",
        "namespaces",
    ] {
        assert_eq!(can_i("watch", kind), "yes", "watch {kind}");
    }
    assert_eq!(can_i("create", "events.events.k8s.io"), "yes");
    assert_eq!(can_i("delete", "persistentvolumes"), "no");
    assert_eq!(can_i("update", "nodes"), "no");
    assert_eq!(can_i("delete", "nodes"), "yes");
    assert_eq!(can_i("delete", "pods"), "no");
    assert_eq!(can_i("create", "pods/eviction"), "no");
}

/// A kubelet's certificate is `system:node:<name>`: the Node authorizer and NodeRestriction let it
/// change only its own Node (not its taints) and evict only pods bound to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_identity_touches_only_its_own_node_and_pods() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    let a = k3s.join(join("ip-10-0-1-20", "a")).await.expect("join a");
    k3s.join(join("ip-10-0-1-21", "b")).await.expect("join b");
    let admin = plane.admin().clone();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "on-b"},
        "spec": {"nodeName": "ip-10-0-1-21", "containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let node_a = client_with(&plane, &a).await;
    let pods: Api<Pod> = Api::namespaced(node_a.clone(), "default");
    let refused = pods
        .evict("on-b", &EvictParams::default())
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&refused),
        403,
        "evicting another node's pod: {refused}"
    );
    let refused = Api::<Pod>::all(node_a.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 403, "listing every pod: {refused}");
    Api::<Pod>::all(node_a.clone())
        .list(&ListParams::default().fields("spec.nodeName=ip-10-0-1-20"))
        .await
        .expect("its own pods");
    let nodes: Api<Node> = Api::all(node_a.clone());
    let cordon = json!({"spec": {"unschedulable": true}});
    let refused = nodes
        .patch(
            "ip-10-0-1-21",
            &PatchParams::default(),
            &Patch::Merge(&cordon),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 403, "cordoning another node: {refused}");
    nodes
        .patch(
            "ip-10-0-1-20",
            &PatchParams::default(),
            &Patch::Merge(&cordon),
        )
        .await
        .expect("cordoning itself");
    let taint = json!({"spec": {"taints": [{"key": "smartscale.io/draining", "value": "true", "effect": "NoSchedule"}]}});
    let refused = nodes
        .patch(
            "ip-10-0-1-20",
            &PatchParams::default(),
            &Patch::Merge(&taint),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&refused),
        403,
        "NodeRestriction forbids a kubelet its own taints: {refused}"
    );
    // No certificate, no access (K3s runs the API server with --anonymous-auth=false).
    let http = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let status = http
        .get(format!("{}/api/v1/nodes", plane.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}

/// NodeRestriction refuses labels a kubelet may not set on itself (`node-role.kubernetes.io/*`,
/// unknown `kubernetes.io`/`k8s.io` ones); the allowed ones register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_may_label_itself_only_within_the_allowed_set() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    for label in [
        "node-role.kubernetes.io/worker",
        "kubernetes.io/role",
        "example.k8s.io/pool",
    ] {
        let mut req = join(&format!("ip-10-0-2-{}", label.len()), "x");
        req.labels.insert(label.into(), "true".into());
        match k3s.join(req).await {
            Err(JoinRefused::Registration(message)) => {
                assert!(
                    message.contains("403") || message.contains("not allowed"),
                    "{label}: {message}"
                )
            }
            other => panic!("{label} must be refused, got {other:?}"),
        }
    }
    let mut req = join("ip-10-0-2-99", "y");
    for label in [
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "smartscale.io/node-group",
    ] {
        req.labels.insert(label.into(), "v".into());
    }
    k3s.join(req).await.expect("allowed labels register");
}

/// A machine that dies leaves its Node: the real node lifecycle controller marks it NotReady and
/// taints it unreachable, nothing deletes it, and K3s refuses a new machine of the same name
/// until the Node is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_kubelet_leaves_a_not_ready_node_that_blocks_its_name() {
    let plane = ControlPlane::start(ControlPlaneOptions {
        node_monitor_grace_period: Duration::from_secs(6),
        ..ControlPlaneOptions::default()
    })
    .await
    .expect("control plane");
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    k3s.join(join("ip-10-0-3-10", "first-machine"))
        .await
        .expect("join");
    let nodes: Api<Node> = Api::all(plane.admin().clone());
    poll_until("Ready", Duration::from_secs(10), || async {
        Ok(nodes
            .get("ip-10-0-3-10")
            .await
            .ok()
            .filter(smartscale_testworld::world::is_ready)
            .map(|_| ()))
    })
    .await
    .unwrap();
    assert!(k3s.stop_kubelet("ip-10-0-3-10"));
    let node = poll_until(
        "NotReady with the unreachable taint",
        Duration::from_secs(30),
        || async {
            let n = nodes
                .get("ip-10-0-3-10")
                .await
                .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable"));
            Ok((ready.as_deref() == Some("Unknown") && tainted).then_some(n))
        },
    )
    .await
    .unwrap();
    assert!(
        node.metadata.deletion_timestamp.is_none(),
        "nothing deletes the Node"
    );
    assert_eq!(
        k3s.join(join("ip-10-0-3-10", "second-machine"))
            .await
            .unwrap_err(),
        JoinRefused::NodePasswordRejected,
        "a new machine with the old name is refused while the Node exists"
    );
    nodes
        .delete("ip-10-0-3-10", &Default::default())
        .await
        .unwrap();
    poll_until(
        "the name to be free again",
        Duration::from_secs(20),
        || async {
            Ok(k3s
                .join(join("ip-10-0-3-10", "second-machine"))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
    .expect("once the Node is deleted K3s lets the new machine join");
}

/// PodDisruptionBudget status is the real disruption controller's: an eviction that would break
/// the budget gets 429, and the same eviction is allowed once the Deployment has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_computed_by_the_disruption_controller_blocks_then_allows() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    k3s.join(join("ip-10-0-4-10", "a")).await.expect("join");
    let admin = plane.admin().clone();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}},
                              "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "nginx"}]}}}
    })).unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "api"}}}
    }))
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), "default");
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let allowed = |n: i32, healthy: i32| {
        let pdbs = pdbs.clone();
        async move {
            poll_until(
                &format!("disruptionsAllowed = {n} with {healthy} healthy pods"),
                Duration::from_secs(30),
                || async {
                    let p = pdbs
                        .get("api")
                        .await
                        .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                    let generation = p.metadata.generation;
                    let s = p.status.unwrap_or_default();
                    Ok((s.disruptions_allowed == n
                        && s.current_healthy == healthy
                        && s.observed_generation == generation)
                        .then_some(()))
                },
            )
            .await
            .unwrap()
        }
    };
    allowed(0, 2).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let victim = pods
        .list(&ListParams::default().labels("app=api"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let refused = pods
        .evict(&victim, &EvictParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), 429, "{refused}");
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    allowed(1, 3).await;
    pods.evict(&victim, &EvictParams::default())
        .await
        .expect("allowed now");
}
