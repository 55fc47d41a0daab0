//! The AWS model: moto plus our lifecycle-hook layer (`aws_model/smartscale_aws.py`), run as a
//! child process, and a client for its control endpoints (docs/interfaces.md, "Test world
//! control endpoints").
//!
//! Each test starts its own model or takes its own region: moto keeps regions apart, so tests
//! sharing a server never see each other's groups.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use serde::{Deserialize, Serialize};

use crate::process::ChildProcess;
use crate::{Error, Result};

/// Credentials the model accepts (moto checks none); also what `up` exports.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
/// The region `up` exports when none is chosen.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The one-line install hint every "missing Python/moto" error carries.
pub const INSTALL_HINT: &str = "run scripts/setup-backends.sh (it creates \
    ${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}/venv with tests/aws_model/requirements.txt), \
    or set SMARTSCALE_PYTHON to a python that has moto[server]==5.2.5";

/// How long the model may take to print its address (moto imports take ~1.5 s here).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the backends (the venv with moto) live: `$SMARTSCALE_BACKENDS_DIR`, else
/// `/tmp/smartscale-backends`, as `scripts/setup-backends.sh` installs them.
pub fn backends_dir() -> PathBuf {
    std::env::var_os("SMARTSCALE_BACKENDS_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/tmp/smartscale-backends"), PathBuf::from)
}

/// The Python that runs the model: `$SMARTSCALE_PYTHON`, else the backends venv's python.
pub fn python_path() -> PathBuf {
    std::env::var_os("SMARTSCALE_PYTHON")
        .filter(|python| !python.is_empty())
        .map_or_else(|| backends_dir().join("venv/bin/python"), PathBuf::from)
}

/// `tests/aws_model/smartscale_aws.py` in this crate's source tree.
pub fn model_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("aws_model/smartscale_aws.py")
}

/// `Ok` if the model's Python exists; a [`Error::MissingDependency`] with the install hint if not.
/// Whether moto imports is only known once the model starts.
pub fn check_python() -> Result<PathBuf> {
    let python = python_path();
    if python.is_file() {
        Ok(python)
    } else {
        Err(Error::MissingDependency(
            "moto",
            format!("no Python at {}; {INSTALL_HINT}", python.display()),
        ))
    }
}

/// One instance as the model's `/_smartscale/instances` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInstance {
    pub instance_id: String,
    pub region: Option<String>,
    pub asg_name: Option<String>,
    pub availability_zone: String,
    pub subnet_id: Option<String>,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub market: String,
    /// The Auto Scaling lifecycle state (`Pending:Wait`, `InService`, `Terminating:Wait`, ...).
    pub lifecycle_state: String,
    /// What IMDS reports at `autoscaling/target-lifecycle-state`.
    pub target_lifecycle_state: String,
    /// The EC2 state (`running`, `terminated`, ...).
    pub ec2_state: String,
}

/// The model's clock: `now` is model time (wall time + `offset`), in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ModelClock {
    pub now: f64,
    pub offset: f64,
}

/// A client for a running model (the process may belong to someone else, e.g. `up`).
#[derive(Debug, Clone)]
pub struct ModelClient {
    endpoint: String,
    http: reqwest::Client,
}

impl ModelClient {
    /// A client for the model at `endpoint` (`http://127.0.0.1:PORT`).
    pub fn new(endpoint: impl Into<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| Error::Invalid(format!("building an HTTP client: {e}")))?;
        Ok(ModelClient {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            http,
        })
    }

    /// `http://127.0.0.1:PORT`, usable as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An SDK config for this model in `region`, with static test credentials, so a test writes
    /// `aws_sdk_autoscaling::Client::new(&model.sdk_config("eu-west-3"))`.
    pub fn sdk_config(&self, region: &str) -> SdkConfig {
        let credentials = Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "smartscale-testworld",
        );
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(self.endpoint.clone())
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build()
    }

    /// `GET /_smartscale/clock`.
    pub async fn clock(&self) -> Result<ModelClock> {
        self.json(self.http.get(self.url("/_smartscale/clock")))
            .await
    }

    /// Move the model clock forward by `seconds` (due lifecycle timeouts apply at once).
    pub async fn advance_clock(&self, seconds: f64) -> Result<ModelClock> {
        let request = self
            .http
            .post(self.url("/_smartscale/clock/advance"))
            .json(&serde_json::json!({ "seconds": seconds }));
        self.json(request).await
    }

    /// Every instance the model knows, in every region, terminated ones included.
    pub async fn instances(&self) -> Result<Vec<ModelInstance>> {
        self.json(self.http.get(self.url("/_smartscale/instances")))
            .await
    }

    /// One instance, `None` if the model does not know it.
    pub async fn instance(&self, instance_id: &str) -> Result<Option<ModelInstance>> {
        let url = self.url(&format!("/_smartscale/instances/{instance_id}"));
        let response = self.send(self.http.get(&url)).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::decode(&url, response).await.map(Some)
    }

    /// Forget everything: the model and all of moto's state, in every region.
    pub async fn reset(&self) -> Result<()> {
        let _: serde_json::Value = self
            .json(self.http.post(self.url("/_smartscale/reset")))
            .await?;
        Ok(())
    }

    /// `GET /_smartscale/health` answered 200.
    pub async fn healthy(&self) -> bool {
        matches!(self.http.get(self.url("/_smartscale/health")).send().await,
            Ok(response) if response.status().is_success())
    }

    /// One EC2 Query API call (`Action=...&Version=2016-11-15&params`) in `region`; the XML body
    /// on success, [`Error::Http`] with AWS's code and message otherwise. Lets tests set up EC2
    /// (launch templates, instance states) without building aws-sdk-ec2, the slowest crate.
    pub async fn ec2_query(
        &self,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<String> {
        let mut form: Vec<(&str, &str)> = vec![("Action", action), ("Version", "2016-11-15")];
        form.extend_from_slice(params);
        // moto routes by the region in the credential scope and checks no signature.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{region}/ec2/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let url = format!("{}/", self.endpoint);
        let response = self
            .send(
                self.http
                    .post(&url)
                    .header("Authorization", authorization)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(
                        url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(&form)
                            .finish(),
                    ),
            )
            .await?;
        let status = response.status();
        let body = response.text().await.map_err(|e| Error::Http {
            url: url.clone(),
            message: format!("reading the {action} response: {e}"),
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let code = xml_text(&body, "Code").unwrap_or("?");
        let message = xml_text(&body, "Message").unwrap_or(&body);
        Err(Error::Http {
            url,
            message: format!("EC2 {action} answered {status}: {code}: {message}"),
        })
    }

    /// Create a launch template (`ImageId`, `InstanceType`) and return its id: what moto needs
    /// before an Auto Scaling group can launch instances.
    pub async fn create_launch_template(
        &self,
        region: &str,
        name: &str,
        image_id: &str,
        instance_type: &str,
    ) -> Result<String> {
        let body = self
            .ec2_query(
                region,
                "CreateLaunchTemplate",
                &[
                    ("LaunchTemplateName", name),
                    ("LaunchTemplateData.ImageId", image_id),
                    ("LaunchTemplateData.InstanceType", instance_type),
                ],
            )
            .await?;
        xml_text(&body, "launchTemplateId")
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "CreateLaunchTemplate answered without an id: {body}"
                ))
            })
    }

    /// The EC2 state name (`pending`, `running`, `terminated`, ...) of an instance, from
    /// `DescribeInstances` (not from the model's own view).
    pub async fn ec2_instance_state(&self, region: &str, instance_id: &str) -> Result<String> {
        let body = self
            .ec2_query(
                region,
                "DescribeInstances",
                &[("InstanceId.1", instance_id)],
            )
            .await?;
        let state = body
            .split_once("<instanceState>")
            .and_then(|(_, rest)| xml_text(rest, "name"));
        state.map(str::to_string).ok_or_else(|| {
            Error::Invalid(format!(
                "DescribeInstances gave no state for {instance_id}: {body}"
            ))
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request.send().await.map_err(|e| Error::Http {
            url: e
                .url()
                .map_or_else(|| self.endpoint.clone(), |u| u.to_string()),
            message: e.to_string(),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        Self::decode(&url, response).await
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        url: &str,
        response: reqwest::Response,
    ) -> Result<T> {
        let status = response.status();
        let body = response.text().await.map_err(|e| Error::Http {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(Error::Http {
                url: url.to_string(),
                message: format!("{status}: {body}"),
            });
        }
        serde_json::from_str(&body).map_err(|e| Error::Http {
            url: url.to_string(),
            message: format!("unexpected answer ({e}): {body}"),
        })
    }
}

/// The text of the first `<tag>...</tag>` in `xml` (no entity decoding; enough for AWS's
/// Query API answers, whose codes, ids and state names have no markup).
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}

/// A running AWS model process; stopped (by PID) when dropped.
#[derive(Debug)]
pub struct AwsModel {
    client: ModelClient,
    process: ChildProcess,
    _log_dir: Option<tempfile::TempDir>,
}

impl AwsModel {
    /// Start a model on a free port, its log in a temporary directory.
    pub async fn start() -> Result<Self> {
        Self::start_with(0, None).await
    }

    /// Start a model on `port` (0: any free port) on 127.0.0.1, logging to `log_dir/aws-model.log`
    /// (a temporary directory if `None`). A busy port is [`Error::PortInUse`]; a missing Python or
    /// moto is [`Error::MissingDependency`] saying how to install it.
    pub async fn start_with(port: u16, log_dir: Option<&Path>) -> Result<Self> {
        let python = check_python()?;
        let (temp, dir) = match log_dir {
            Some(dir) => (None, dir.to_path_buf()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("smartscale-aws-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a directory for the AWS model's log", e))?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut command = Command::new(&python);
        command
            .arg(model_script())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1");
        let mut process =
            ChildProcess::spawn("AWS model (moto)", command, dir.join("aws-model.log"))?;
        let line = match process
            .wait_for_log_line("listening on http://", START_TIMEOUT)
            .await
        {
            Ok(line) => line,
            Err(error) => return Err(Self::explain(error, &python, port, &process.log())),
        };
        let endpoint = line
            .split_whitespace()
            .last()
            .filter(|url| url.starts_with("http://"))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the AWS model printed an unexpected first line: {line}"
                ))
            })?;
        let client = ModelClient::new(endpoint)?;
        tracing::info!(endpoint, pid = process.pid(), "AWS model ready");
        Ok(AwsModel {
            client,
            process,
            _log_dir: temp,
        })
    }

    /// Turn a start failure into the error a person can act on.
    fn explain(error: Error, python: &Path, port: u16, log: &str) -> Error {
        if log.contains("No module named") {
            Error::MissingDependency(
                "moto",
                format!("{} cannot import it; {INSTALL_HINT}", python.display()),
            )
        } else if port != 0 && log.contains("cannot listen on") {
            Error::PortInUse(port)
        } else {
            error
        }
    }

    /// The control client (cheap to clone; hand it to IMDS servers and pollers).
    pub fn client(&self) -> &ModelClient {
        &self.client
    }

    /// `http://127.0.0.1:PORT`, usable as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The model's own log (moto's request log and any Python traceback).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `Ok` while the process runs; its log otherwise.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// See [`ModelClient::sdk_config`].
    pub fn sdk_config(&self, region: &str) -> SdkConfig {
        self.client.sdk_config(region)
    }

    /// See [`ModelClient::advance_clock`].
    pub async fn advance_clock(&self, seconds: f64) -> Result<ModelClock> {
        self.client.advance_clock(seconds).await
    }

    /// See [`ModelClient::instances`].
    pub async fn instances(&self) -> Result<Vec<ModelInstance>> {
        self.client.instances().await
    }

    /// See [`ModelClient::instance`].
    pub async fn instance(&self, instance_id: &str) -> Result<Option<ModelInstance>> {
        self.client.instance(instance_id).await
    }

    /// See [`ModelClient::reset`].
    pub async fn reset(&self) -> Result<()> {
        self.client.reset().await
    }

    /// Stop the process (SIGTERM, then SIGKILL) without blocking the runtime.
    pub async fn shutdown(self) {
        self.process.shutdown().await;
    }
}
