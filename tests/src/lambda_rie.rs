//! The controller's Lambda mode under the real AWS Lambda Runtime Interface Emulator (RIE, the
//! emulator AWS ships in its Lambda base images, built from the Go module proxy by
//! `scripts/setup-backends.sh` from `tests/lambda-rie/`), run as a child process.
//!
//! The RIE starts the controller binary as the function's `bootstrap`, with no arguments, as
//! `provided.al2023` does, serves the Runtime API to it and takes invocations on
//! `POST /2015-03-31/functions/function/invocations`; it enforces the function timeout
//! (`AWS_LAMBDA_FUNCTION_TIMEOUT`) and prints Lambda's `REPORT` lines (init and invocation
//! durations). One RIE is one execution environment: it runs one invocation at a time, so two
//! concurrent invocations need two of them (Lambda would start a second environment).
//!
//! The function's Kubernetes identity is what the K3s server publishes at boot: the controller's
//! ServiceAccount token, the cluster CA and the API server's address, as JSON in a Secrets
//! Manager secret ([`publish_identity`]). Its environment has no `KUBECONFIG`.

use crate::process::{ChildProcess, free_port, poll_until};
use crate::world::{World, product_binary};
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The secret the function reads its Kubernetes identity from (as the stack names it).
pub const IDENTITY_SECRET: &str = "smartscale/e2e/controller-kubernetes";
/// The function's name in the emulator (AWS_LAMBDA_FUNCTION_NAME).
pub const FUNCTION_NAME: &str = "smartscale-e2e-controller";
const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

/// `$SMARTSCALE_BACKENDS_DIR/bin/aws-lambda-rie`, or how to build it.
pub fn rie_binary() -> Result<PathBuf> {
    let path = crate::aws::backends_dir().join("bin/aws-lambda-rie");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingDependency(
            "the AWS Lambda Runtime Interface Emulator",
            format!(
                "no {}; run scripts/setup-backends.sh (it builds tests/lambda-rie with scripts/build-go-binary.sh)",
                path.display()
            ),
        ))
    }
}

/// EventBridge's payload for a schedule rule (what the stack's rule sends every minute).
pub fn scheduled_event(region: &str) -> Value {
    json!({
        "version": "0",
        "id": format!("{:08x}-0000-4000-8000-000000000000", rand::random::<u32>()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": region,
        "resources": [format!("arn:aws:events:{region}:123456789012:rule/smartscale-e2e-schedule")],
        "detail": {}
    })
}

/// Does what the K3s server does at boot in Lambda mode: reads the controller's ServiceAccount
/// token Secret (the token controller fills it) and stores `{server, ca_crt, token}` in Secrets
/// Manager. Returns the secret's ARN.
pub async fn publish_identity(world: &World) -> Result<String> {
    use base64::Engine;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(world.kube.clone(), "kube-system");
    let secret = secrets
        .get("smartscale-controller-token")
        .await
        .map_err(|e| Error::Invalid(format!("reading the controller's token Secret: {e}")))?;
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|v| v.0.clone())
            .ok_or_else(|| Error::Invalid(format!("the token Secret has no {k}")))
    };
    let token = String::from_utf8_lossy(&field("token")?).into_owned();
    let ca = base64::engine::general_purpose::STANDARD.encode(field("ca.crt")?);
    let server = world
        .plane
        .kubeconfig(crate::kubernetes::Credential::Token(String::new()))
        .server;
    let value = json!({ "server": server, "ca_crt": ca, "token": token }).to_string();
    let client = aws_sdk_secretsmanager::Client::new(&world.aws.sdk_config(&world.region));
    let out = client
        .create_secret()
        .name(IDENTITY_SECRET)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "CreateSecret: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(e)
            ))
        })?;
    out.arn
        .ok_or_else(|| Error::Invalid("CreateSecret returned no ARN".into()))
}

/// Writes `text` (the controller's YAML) into the SSM parameter `name`, as `pulumi up` does.
pub async fn put_config_parameter(world: &World, name: &str, text: &str) -> Result<()> {
    let ssm = aws_sdk_ssm::Client::new(&world.aws.sdk_config(&world.region));
    ssm.put_parameter()
        .name(name)
        .value(text)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "PutParameter: {}",
                aws_sdk_ssm::error::DisplayErrorContext(e)
            ))
        })?;
    Ok(())
}

/// How the function is configured.
#[derive(Debug, Clone)]
pub struct FunctionOptions {
    /// The function timeout, whole seconds (what the RIE enforces).
    pub timeout_s: u32,
    /// The function's environment beyond the AWS endpoint, region and credentials.
    pub env: Vec<(String, String)>,
}

/// One execution environment: the RIE with the controller as its bootstrap.
pub struct Function {
    rie: ChildProcess,
    url: String,
    pub timeout: Duration,
}

/// What one invocation answered.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub status: u16,
    /// The function's result (the decision JSON), or its error object.
    pub body: Value,
    /// `errorType` when the function failed.
    pub error_type: Option<String>,
    /// The text the emulator answered when the body is not JSON (a timeout says so).
    pub text: String,
    /// From the request to the answer, on our side.
    pub wall: Duration,
}

impl Invoked {
    pub fn failed(&self) -> bool {
        self.error_type.is_some() || !self.body.is_object()
    }
}

/// One `REPORT` line of the emulator: this invocation's duration, and the init's on a cold start.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub request_id: String,
    pub init_ms: Option<f64>,
    pub duration_ms: f64,
}

fn report_field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(name)? + name.len();
    line[at..].trim_start().split(' ').next()?.parse().ok()
}

/// Parses the RIE's `REPORT RequestId: …\tInit Duration: … ms\tDuration: … ms\t…` lines.
pub fn reports(log: &str) -> Vec<Report> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("REPORT RequestId: ").nth(1)?;
            Some(Report {
                request_id: rest.split_whitespace().next()?.to_string(),
                init_ms: report_field(rest, "Init Duration:"),
                duration_ms: report_field(rest, "\tDuration:")?,
            })
        })
        .collect()
}

/// Parses `INIT REPORT(durationMs: 39.020000)` lines.
pub fn init_durations_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("INIT REPORT(durationMs: ").nth(1)?;
            rest.split(')').next()?.trim().parse().ok()
        })
        .collect()
}

impl Function {
    /// Starts an emulator running the controller binary as the bootstrap, with this world's AWS
    /// endpoint and credentials and `opts.env`; no Kubernetes credential in the environment.
    pub async fn start(world: &World, opts: FunctionOptions) -> Result<Function> {
        Self::start_binary(world, &product_binary("smartscale-controller")?, opts).await
    }

    pub async fn start_binary(
        world: &World,
        bootstrap: &Path,
        opts: FunctionOptions,
    ) -> Result<Function> {
        let rie = rie_binary()?;
        let port = free_port()?;
        let runtime_port = free_port()?;
        let mut cmd = Command::new(&rie);
        cmd.arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{runtime_port}"))
            .arg(bootstrap)
            .current_dir(world.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", world.dir.path())
            .env("RUST_LOG", "info")
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", opts.timeout_s.to_string());
        for (k, v) in world.env() {
            if k != "KUBECONFIG" {
                cmd.env(k, v);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let log = world.dir.path().join(format!("lambda-rie-{port}.log"));
        let mut child = ChildProcess::spawn(format!("aws-lambda-rie:{port}"), cmd, log)?;
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            child.check_running()?;
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                return Err(Error::NotReady {
                    name: child.name().to_string(),
                    seconds: 15,
                    log: child.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Function {
            rie: child,
            url: format!("http://{addr}{INVOKE_PATH}"),
            timeout: Duration::from_secs(u64::from(opts.timeout_s)),
        })
    }

    /// Invokes the function with `payload` (raw bytes, as the Invoke API takes them).
    pub async fn invoke_raw(&self, payload: Vec<u8>) -> Result<Invoked> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(self.timeout + Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?;
        let started = Instant::now();
        let resp = client
            .post(&self.url)
            .body(payload)
            .send()
            .await
            .map_err(|e| Error::Http {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| Error::Http {
            url: self.url.clone(),
            message: e.to_string(),
        })?;
        let wall = started.elapsed();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error_type = body
            .get("errorType")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Invoked {
            status,
            body,
            error_type,
            text,
            wall,
        })
    }

    pub async fn invoke(&self, payload: &Value) -> Result<Invoked> {
        self.invoke_raw(payload.to_string().into_bytes()).await
    }

    /// The emulator's log: its own lines, and the function's (stdout and stderr).
    pub fn log(&self) -> String {
        self.rie.log()
    }

    pub fn reports(&self) -> Vec<Report> {
        reports(&self.rie.log())
    }

    /// The emulator's `INIT REPORT(durationMs: …)` lines: the bootstrap's start until it asked
    /// for its first event (process start, runtime and AWS configuration), per cold start.
    pub fn init_durations_ms(&self) -> Vec<f64> {
        init_durations_ms(&self.rie.log())
    }

    /// Waits until `n` REPORT lines are in the log (the emulator prints one after each
    /// invocation, shortly after answering it).
    pub async fn wait_reports(&self, n: usize) -> Result<Vec<Report>> {
        poll_until(
            &format!("{n} REPORT line(s) from the emulator"),
            Duration::from_secs(10),
            || async {
                let r = self.reports();
                Ok((r.len() >= n).then_some(r))
            },
        )
        .await
    }

    /// The environment of the bootstrap the emulator started (the controller), from /proc:
    /// what the function could read of its own environment.
    pub fn bootstrap_environment(&self) -> Vec<String> {
        let rie = self.rie.pid().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        for entry in dir.flatten() {
            let path = entry.path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the parenthesised command name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if parent == Some(rie.as_str())
                && let Ok(env) = std::fs::read(path.join("environ"))
            {
                return env
                    .split(|b| *b == 0)
                    .filter(|v| !v.is_empty())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
            }
        }
        Vec::new()
    }

    pub async fn shutdown(self) {
        let _ = self.rie.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_give_the_init_and_invocation_durations() {
        let log = "START RequestId: a Version: $LATEST\nEND RequestId: a\nREPORT RequestId: a\tInit Duration: 41.20 ms\tDuration: 812.50 ms\tBilled Duration: 813 ms\tMemory Size: 256 MB\tMax Memory Used: 256 MB\t\nREPORT RequestId: b\tDuration: 95.01 ms\tBilled Duration: 96 ms\tMemory Size: 256 MB\tMax Memory Used: 256 MB\t\n";
        assert_eq!(
            reports(log),
            vec![
                Report {
                    request_id: "a".into(),
                    init_ms: Some(41.2),
                    duration_ms: 812.5
                },
                Report {
                    request_id: "b".into(),
                    init_ms: None,
                    duration_ms: 95.01
                },
            ]
        );
        let init = "02 Dec 2026 05:12:24,987 [INFO] (rapid) INIT REPORT(durationMs: 39.020000)\n";
        assert_eq!(init_durations_ms(init), vec![39.02]);
    }
}
