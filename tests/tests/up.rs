//! `smartscale-testworld up` as a person runs it: the export lines, every endpoint answering,
//! a clean stop on SIGTERM with every child gone, and one clear line for a busy port or a
//! missing dependency.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use smartscale_testworld::aws::ModelClient;
use smartscale_testworld::imds::{TOKEN_HEADER, TTL_HEADER};
use smartscale_testworld::process::{pid_running, poll_until};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_smartscale-testworld");
const REQUIRED: [&str; 8] = [
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "KUBECONFIG",
    "PROMETHEUS_URL",
    "TESTWORLD_IMDS_DIRECTORY",
    "TESTWORLD_PID",
];

async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test exceeded its 120 s deadline");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

async fn get_ok(url: &str) -> String {
    let response = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.text().await.expect("body")
}

/// `export NAME=value` → (NAME, value), undoing the single quotes `up` may add.
fn parse_export(line: &str) -> Option<(String, String)> {
    let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
    let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(quoted) => quoted.replace(r"'\''", "'"),
        None => value.to_string(),
    };
    Some((name.to_string(), value))
}

/// The PIDs named in the comment line "... AWS model pid N, Prometheus pid M)".
fn child_pids(comments: &[String]) -> Vec<u32> {
    let text = comments.join("\n");
    ["AWS model pid ", "Prometheus pid "]
        .iter()
        .filter_map(|marker| {
            let rest = &text[text.find(marker)? + marker.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn up_serves_every_endpoint_and_stops_cleanly_on_sigterm() {
    bounded(async {
        let logs = tempfile::tempdir().expect("temp dir");
        let stderr_path = logs.path().join("up.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = tokio::process::Command::new(BIN)
            .arg("up")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("start up");
        let up_pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut exports = BTreeMap::new();
        let mut comments = Vec::new();
        let read = async {
            while !REQUIRED.iter().all(|name| exports.contains_key(*name)) {
                let Some(line) = lines.next_line().await.expect("stdout") else {
                    break;
                };
                if let Some((name, value)) = parse_export(&line) {
                    exports.insert(name, value);
                } else {
                    assert!(line.starts_with('#'), "unexpected stdout line: {line}");
                    comments.push(line);
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .is_err()
            || !REQUIRED.iter().all(|name| exports.contains_key(*name))
        {
            panic!(
                "up did not print its exports; got {exports:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(
            comments.iter().any(|c| c.contains("paste these lines")),
            "{comments:?}"
        );
        assert_eq!(exports["TESTWORLD_PID"], up_pid.to_string());
        assert_eq!(exports["AWS_ACCESS_KEY_ID"], "testing");
        let pids = child_pids(&comments);
        assert_eq!(pids.len(), 2, "{comments:?}");
        for pid in &pids {
            assert!(pid_running(*pid), "child {pid} runs");
            assert_eq!(parent_of(*pid), Some(up_pid), "child {pid} belongs to up");
        }

        // AWS model (moto behind it).
        let aws = &exports["AWS_ENDPOINT_URL"];
        assert!(
            get_ok(&format!("{aws}/_smartscale/health"))
                .await
                .contains("true")
        );
        let model = ModelClient::new(aws.clone()).expect("model client");
        let region = exports["AWS_REGION"].clone();
        model
            .create_launch_template(&region, "up-lt", "ami-12c6146b", "t3.medium")
            .await
            .expect("EC2 through the exported endpoint");
        let asg = aws_sdk_autoscaling::Client::new(&model.sdk_config(&region));
        asg.create_auto_scaling_group()
            .auto_scaling_group_name("up-workers")
            .min_size(1)
            .max_size(2)
            .desired_capacity(1)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name("up-lt")
                    .build(),
            )
            .availability_zones(format!("{region}a"))
            .send()
            .await
            .expect("CreateAutoScalingGroup");

        // The IMDS directory picks the instance up; its IMDS answers with a token.
        let directory = &exports["TESTWORLD_IMDS_DIRECTORY"];
        let listed: BTreeMap<String, String> = poll_until(
            "the instance in the IMDS directory",
            Duration::from_secs(10),
            || async {
                let listed: BTreeMap<String, String> =
                    serde_json::from_str(&get_ok(directory).await)
                        .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                Ok((!listed.is_empty()).then_some(listed))
            },
        )
        .await
        .expect("directory");
        let (instance_id, imds) = listed.iter().next().expect("one instance");
        let token = http()
            .put(format!("{imds}latest/api/token"))
            .header(TTL_HEADER, "60")
            .send()
            .await
            .expect("token")
            .text()
            .await
            .expect("token body");
        let id = http()
            .get(format!("{imds}latest/meta-data/instance-id"))
            .header(TOKEN_HEADER, token)
            .send()
            .await
            .expect("instance-id")
            .text()
            .await
            .expect("body");
        assert_eq!(&id, instance_id);

        // Kubernetes: the admin kubeconfig (mode 0600, TLS with a client certificate) works for
        // real kubectl: the ready-made cluster's nodes are Ready, a Deployment applied with
        // kubectl runs on the simulated nodes, and a drain moves its pods to the other worker.
        let kubeconfig = std::path::PathBuf::from(&exports["KUBECONFIG"]);
        let mode = std::fs::metadata(&kubeconfig)
            .expect("kubeconfig")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "kubeconfig mode {mode:o}");
        let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
        assert!(text.contains("server: https://127.0.0.1:"), "{text}");
        assert!(text.contains("client-certificate-data"), "TLS client certificate");
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args)
                .output()
                .expect("run kubectl");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let workers: Vec<String> = poll_until(
            "kubectl get nodes: the server and two Ready workers",
            Duration::from_secs(30),
            || async {
                let (ok, out, _) = kubectl(&["get", "nodes", "--no-headers"]);
                let ready: Vec<String> = out
                    .lines()
                    .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .filter(|n| n != "server")
                    .collect();
                Ok((ok && ready.len() == 2 && out.contains("server")).then_some(ready))
            },
        )
        .await
        .expect("nodes");
        let manifest = logs.path().join("web.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers: [{name: web, image: nginx, resources: {requests: {cpu: 100m}}}]\n",
        )
        .expect("manifest");
        let (ok, out, err) = kubectl(&["apply", "-f", manifest.to_str().expect("path")]);
        assert!(ok, "kubectl apply: {out}{err}");
        assert!(out.contains("deployment.apps/web created"), "{out}");
        let running_on = |node: Option<&str>| {
            let (_, out, _) = kubectl(&["get", "pods", "-l", "app=web", "-o", "wide", "--no-headers"]);
            out.lines()
                .filter(|l| l.split_whitespace().nth(2) == Some("Running"))
                .filter(|l| node.is_none_or(|n| l.split_whitespace().any(|w| w == n)))
                .count()
        };
        poll_until("2 web pods Running", Duration::from_secs(30), || async {
            Ok((running_on(None) == 2).then_some(()))
        })
        .await
        .expect("deployment runs");
        let (ok, out, err) = kubectl(&[
            "drain", &workers[0], "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
        ]);
        assert!(ok, "kubectl drain: {out}{err}");
        assert!(out.contains("drained"), "{out}");
        poll_until(
            "both web pods Running on the other worker",
            Duration::from_secs(30),
            || async { Ok((running_on(Some(&workers[1])) == 2).then_some(())) },
        )
        .await
        .expect("rescheduled by the real scheduler");

        // The ready-made cluster: a controller config the controller itself accepts.
        let config = comments
            .iter()
            .find_map(|c| {
                c.split_whitespace()
                    .find(|w| w.ends_with("controller.yaml"))
            })
            .expect("a controller config in the comments")
            .to_string();
        let check = std::process::Command::new(
            smartscale_testworld::world::product_binary("smartscale-controller")
                .expect("controller binary"),
        )
        .env_clear()
        .args(["--config", &config, "check"])
        .output()
        .expect("run check");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );

        // Prometheus, scraping the exporter.
        let prometheus = &exports["PROMETHEUS_URL"];
        get_ok(&format!("{prometheus}/-/ready")).await;
        poll_until(
            "Prometheus to scrape the exporter",
            Duration::from_secs(30),
            || async {
                let body: serde_json::Value = serde_json::from_str(
                    &get_ok(&format!("{prometheus}/api/v1/query?query=up")).await,
                )
                .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                let scraped = body["data"]["result"]
                    .as_array()
                    .is_some_and(|series| series.iter().any(|s| s["value"][1] == "1"));
                Ok(scraped.then_some(()))
            },
        )
        .await
        .expect("up == 1");

        // The exporter mirrors the cluster's nodes, and a person can set a node's load.
        let control = exports["TESTWORLD_EXPORTER_URL"]
            .trim_end_matches("/metrics")
            .to_string();
        let loaded = workers[1].clone();
        poll_until(
            "the exporter to accept the node's load",
            Duration::from_secs(10),
            || async {
                let response = http()
                    .post(format!("{control}/control/nodes/{loaded}"))
                    .body(r#"{"busy_percent": 85}"#)
                    .send()
                    .await
                    .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                Ok((response.status() == 204).then_some(()))
            },
        )
        .await
        .expect("set load");
        // That node only: the other nodes report their own load.
        let cpu = format!(
            r#"(1 - avg(rate(node_cpu_seconds_total{{mode="idle",instance="{loaded}:9100"}}[5s]))) * 100"#
        );
        poll_until(
            "Prometheus to see the node at 85% CPU",
            Duration::from_secs(40),
            || async {
                let url = url::Url::parse_with_params(
                    &format!("{prometheus}/api/v1/query"),
                    [("query", cpu.as_str())],
                )
                .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                let body: serde_json::Value = serde_json::from_str(&get_ok(url.as_str()).await)
                    .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                let value = body["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                Ok(value.filter(|v| (v - 85.0).abs() < 1.5).map(|_| ()))
            },
        )
        .await
        .expect("node CPU in Prometheus");

        // SIGTERM: a clean exit, every child gone, nothing listening.
        // SAFETY: kill has no memory-safety preconditions; up_pid is our own unreaped child.
        let rc = unsafe { libc::kill(i32::try_from(up_pid).expect("pid"), libc::SIGTERM) };
        assert_eq!(rc, 0);
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("up exits within 20 s of SIGTERM")
            .expect("exit status");
        let stderr_text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(status.success(), "exit {status:?}; stderr:\n{stderr_text}");
        for pid in pids {
            assert!(
                !pid_running(pid),
                "child {pid} still running after up exited"
            );
        }
        assert!(
            http()
                .get(format!("{aws}/_smartscale/health"))
                .send()
                .await
                .is_err(),
            "AWS model still answers"
        );
        assert!(
            http()
                .get(format!("{prometheus}/-/ready"))
                .send()
                .await
                .is_err(),
            "Prometheus still answers"
        );
        assert!(
            http().get(directory).send().await.is_err(),
            "IMDS directory still answers"
        );
        assert!(
            !kubeconfig.exists(),
            "the temporary state directory is removed"
        );
    })
    .await;
}

/// Run `up` with `args` and `envs` to its exit: (exit code, stdout, stderr).
async fn run_up(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("up").args(args).kill_on_drop(true);
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("up exits within 30 s")
        .expect("run up");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_busy_port_is_one_clear_line() {
    bounded(async {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = busy.local_addr().expect("address").port();
        let base = port;
        let (code, stdout, stderr) = run_up(&["--port-base", &base.to_string()], &[]).await;
        assert_eq!(code, Some(1), "stderr: {stderr}");
        assert!(stdout.is_empty(), "nothing exported: {stdout}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].contains(&format!("port {port}")) && lines[0].contains("already in use"),
            "{stderr}"
        );
        drop(busy);
    })
    .await;
}

#[tokio::test]
async fn a_missing_dependency_is_one_clear_line() {
    bounded(async {
        let (code, stdout, stderr) =
            run_up(&[], &[("SMARTSCALE_PYTHON", "/nonexistent/python")]).await;
        assert_eq!(code, Some(1), "stderr: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("moto is not installed")
                && stderr.contains("scripts/setup-backends.sh"),
            "{stderr}"
        );

        let (code, _, stderr) =
            run_up(&[], &[("SMARTSCALE_PROMTOOL", "/nonexistent/promtool")]).await;
        assert_eq!(code, Some(1), "stderr: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("promtool is not installed") && stderr.contains("apt-get install"),
            "{stderr}"
        );
    })
    .await;
}
