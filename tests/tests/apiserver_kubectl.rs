//! The real `/usr/bin/kubectl` against the fake API server, as against a real cluster: version
//! dispatch, `get nodes`, `create -f` (a pod, a PDB, a DaemonSet from YAML, with kubectl's default
//! strict validation), `cordon`, and `drain --ignore-daemonsets --delete-emptydir-data` with a
//! PodDisruptionBudget that makes the drain wait for a replacement pod.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use smartscale_testworld::apiserver::{ApiServerOptions, FakeApiServer};

const KUBECTL: &str = "/usr/bin/kubectl";
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A fake API server plus a kubeconfig and a private HOME/cache for kubectl.
struct World {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl World {
    async fn start() -> World {
        let server = FakeApiServer::start(ApiServerOptions::default())
            .await
            .expect("start fake apiserver");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig, None)
            .expect("kubeconfig");
        World {
            server,
            dir,
            kubeconfig,
        }
    }

    /// Run kubectl with this world's kubeconfig; kills it if it outlives `limit`.
    async fn kubectl_with_limit(&self, args: &[&str], limit: Duration) -> Output {
        let home = self.dir.path().join("home");
        let mut command = tokio::process::Command::new(KUBECTL);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", &home)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        let output = tokio::time::timeout(limit, command.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {limit:?}"))
            .expect("run kubectl");
        eprintln!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_limit(args, Duration::from_secs(30)).await
    }

    /// Run kubectl and return its stdout, failing the test if it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    fn pods_on(&self, node: &str) -> Vec<Pod> {
        self.server
            .pods()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .collect()
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test did not finish within its time limit");
}

async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: worker-1
  labels: {kubernetes.io/hostname: worker-1}
spec:
  providerID: aws:///us-east-1a/i-0000000000000001
---
apiVersion: v1
kind: Node
metadata:
  name: worker-2
  labels: {kubernetes.io/hostname: worker-2}
spec:
  providerID: aws:///us-east-1b/i-0000000000000002
"#;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-exporter, namespace: kube-system}
spec:
  selector: {matchLabels: {app: node-exporter}}
  template:
    metadata: {labels: {app: node-exporter}}
    spec:
      containers:
      - name: exporter
        image: prom/node-exporter:v1.9.1
        resources: {requests: {cpu: 50m, memory: 32Mi}}
"#;

const PDB: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
"#;

/// A web pod as a ReplicaSet would create it, with an emptyDir (so drain needs
/// `--delete-emptydir-data`) and a short grace period.
fn web_pod(name: &str, node: Option<&str>) -> String {
    let selector = node.map_or(String::new(), |n| {
        format!("  nodeSelector: {{kubernetes.io/hostname: {n}}}\n")
    });
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8f, uid: 6b1f2c3d-0000-4000-8000-000000000001, controller: true}}
spec:
{selector}  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: nginx:1.27
    resources: {{requests: {{cpu: 250m, memory: 128Mi}}}}
    volumeMounts: [{{name: cache, mountPath: /cache}}]
  volumes: [{{name: cache, emptyDir: {{}}}}]
"#
    )
}

#[tokio::test]
async fn kubectl_version_get_create_and_cordon() {
    bounded(async {
        let world = World::start().await;
        let version: serde_json::Value =
            serde_json::from_str(&world.ok(&["version", "-o", "json"]).await).expect("version json");
        assert_eq!(version["serverVersion"]["gitVersion"], json!("v1.33.1+k3s1"));
        // /usr/bin/kubectl dispatches on the server version: the 1.33 binary answers.
        assert_eq!(version["clientVersion"]["minor"], json!("33"), "{version}");

        let nodes = world.write("nodes.yaml", NODES);
        let created = world.ok(&["create", "-f", path_arg(&nodes)]).await;
        assert_eq!(created, "node/worker-1 created\nnode/worker-2 created\n");
        eventually("nodes Ready", || {
            world.server.nodes().iter().all(|n| {
                n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
        })
        .await;
        let table = world.ok(&["get", "nodes"]).await;
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("STATUS"), "{table}");
        assert!(lines[1].starts_with("worker-1") && lines[1].contains(" Ready "), "{table}");
        assert!(lines[2].starts_with("worker-2"), "{table}");

        // A pod and a PDB from YAML, validated by kubectl's default --validate=strict.
        let manifest = world.write("app.yaml", &format!("{}---{PDB}", web_pod("web-0", None)));
        let created = world.ok(&["create", "-f", path_arg(&manifest)]).await;
        assert_eq!(created, "pod/web-0 created\npoddisruptionbudget.policy/web created\n");
        let pods = world.ok(&["get", "pods", "-o", "name"]).await;
        assert_eq!(pods, "pod/web-0\n");
        let pdb = world.ok(&["get", "pdb", "web", "-o", "jsonpath={.spec.minAvailable}"]).await;
        assert_eq!(pdb, "1");

        // Unknown fields are refused as a real server refuses them under kubectl's strict validation.
        let bad = world.write(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers: [{name: c, image: i, colour: red}]\n",
        );
        let refused = world.kubectl(&["create", "-f", path_arg(&bad)]).await;
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(r#"Error from server (BadRequest): error when creating"#)
                && stderr.contains(r#"strict decoding error: unknown field "spec.containers[0].colour""#),
            "{stderr}"
        );

        assert_eq!(world.ok(&["cordon", "worker-2"]).await, "node/worker-2 cordoned\n");
        let node = world
            .server
            .nodes()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some("worker-2"))
            .expect("worker-2");
        assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
        let table = world.ok(&["get", "node", "worker-2"]).await;
        assert!(table.contains("Ready,SchedulingDisabled"), "{table}");
        assert_eq!(world.ok(&["uncordon", "worker-2"]).await, "node/worker-2 uncordoned\n");
    })
    .await;
}

#[tokio::test]
async fn kubectl_drain_leaves_only_daemonset_pods() {
    bounded(async {
        let world = World::start().await;
        let nodes = world.write("nodes.yaml", NODES);
        world.ok(&["create", "-f", path_arg(&nodes)]).await;
        let manifest = world.write(
            "app.yaml",
            &format!(
                "{DAEMONSET}---{PDB}---{}---{}",
                web_pod("web-0", Some("worker-1")),
                web_pod("web-1", Some("worker-1"))
            ),
        );
        world.ok(&["create", "-f", path_arg(&manifest)]).await;
        eventually("web pods and daemon pods running", || {
            let running = world
                .server
                .pods()
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            running == 4
        })
        .await;

        // Stand in for the ReplicaSet controller: whenever a web pod terminates, create a
        // replacement (it lands on worker-2 once worker-1 is cordoned). Until the replacement is
        // Ready the budget (minAvailable 1 of 2) refuses the second eviction and kubectl retries.
        let replacer = {
            let kubeconfig = world.kubeconfig.clone();
            let template = web_pod("REPLACEMENT", None);
            tokio::spawn(async move {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .expect("config");
                let client = kube::Client::try_from(config).expect("client");
                let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
                let mut made = 0;
                loop {
                    let live = pods
                        .list(&kube::api::ListParams::default().labels("app=web"))
                        .await
                        .map(|l| {
                            l.items
                                .into_iter()
                                .filter(|p| p.metadata.deletion_timestamp.is_none())
                                .count()
                        })
                        .unwrap_or(2);
                    if live < 2 {
                        made += 1;
                        let text = template.replace("REPLACEMENT", &format!("web-r{made}"));
                        let pod: Pod = serde_saphyr::from_str(&text).expect("replacement manifest");
                        let _ = pods.create(&kube::api::PostParams::default(), &pod).await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        let started = Instant::now();
        let drain = world
            .kubectl_with_limit(
                &[
                    "drain",
                    "worker-1",
                    "--ignore-daemonsets",
                    "--delete-emptydir-data",
                    "--timeout=60s",
                ],
                Duration::from_secs(90),
            )
            .await;
        replacer.abort();
        let stdout = String::from_utf8_lossy(&drain.stdout);
        let stderr = String::from_utf8_lossy(&drain.stderr);
        assert!(drain.status.success(), "drain failed: {stdout}{stderr}");
        assert!(stdout.starts_with("node/worker-1 cordoned\n"), "{stdout}");
        assert!(
            stdout.trim_end().ends_with("node/worker-1 drained"),
            "{stdout}"
        );
        assert!(
            stderr.contains("Warning: ignoring DaemonSet-managed Pods: kube-system/node-exporter-"),
            "{stderr}"
        );
        assert!(
            stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
            "the budget held the second eviction back until its replacement was Ready: {stderr}"
        );
        eprintln!("drain took {:?}", started.elapsed());

        let node = world
            .server
            .nodes()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some("worker-1"))
            .expect("worker-1");
        assert_eq!(
            node.spec.and_then(|s| s.unschedulable),
            Some(true),
            "worker-1 stays cordoned"
        );
        let left = world.pods_on("worker-1");
        assert_eq!(
            left.len(),
            1,
            "only the daemon pod is left: {:?}",
            left.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
        );
        let owner = left[0].metadata.owner_references.as_ref().expect("owner")[0]
            .kind
            .clone();
        assert_eq!(owner, "DaemonSet");
        let evicted: Vec<String> = world
            .server
            .eviction_log()
            .into_iter()
            .filter(|(_, code)| *code == 201)
            .map(|(pod, _)| pod)
            .collect();
        assert_eq!(
            evicted.len(),
            2,
            "both web pods were evicted, not deleted: {evicted:?}"
        );
        assert!(world.server.deletion_log().is_empty());
        let on_worker_2 = world.pods_on("worker-2");
        assert_eq!(
            on_worker_2
                .iter()
                .filter(|p| p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some("web"))
                .count(),
            2,
            "the replacements run on worker-2"
        );
    })
    .await;
}
