//! The test world's Kubernetes: the real control plane with simulated kubelets behaves as a K3s
//! cluster does, checked with real clients (kube-rs and kubectl).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use smartscale_testworld::kubernetes::{
    ControlPlane, ControlPlaneOptions, JoinRefused, JoinRequest, K3sOptions, K3sServer,
};
use smartscale_testworld::process::poll_until;
use std::time::{Duration, Instant};

fn join(name: &str, password: &str) -> JoinRequest {
    JoinRequest {
        token: K3sOptions::default().tokens[0].clone(),
        node_name: name.into(),
        node_password: password.into(),
        provider_id: Some(format!("aws:///us-east-1a/i-{name}")),
        labels: [("topology.kubernetes.io/zone".to_string(), "us-east-1a".to_string())].into(),
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
    eprintln!("control plane ready in {:.1} s", started.elapsed().as_secs_f64());
    let k3s = K3sServer::start(&plane, K3sOptions::default()).expect("k3s");
    k3s.join(join("ip-10-0-1-10", "pw-a")).await.expect("join a");
    k3s.join(join("ip-10-0-1-11", "pw-b")).await.expect("join b");
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
    deployments.create(&PostParams::default(), &d).await.expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let running = poll_until("3 web pods Running", Duration::from_secs(30), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
        let n = list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        Ok((n == 3).then_some(list))
    })
    .await
    .expect("pods run");
    for p in &running.items {
        assert!(p.spec.as_ref().unwrap().node_name.as_deref().unwrap().starts_with("ip-10-0-1-1"));
    }
    let node = Api::<Node>::all(admin.clone()).get("ip-10-0-1-10").await.unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels.get("node.kubernetes.io/instance-type").map(String::as_str), Some("k3s"));
    assert!(node.spec.unwrap().taints.unwrap_or_default().is_empty());
    // The same name with another password is refused while the Node exists.
    assert_eq!(
        k3s.join(join("ip-10-0-1-10", "pw-other")).await.unwrap_err(),
        JoinRefused::NodePasswordRejected
    );
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    plane.shutdown().await;
}
