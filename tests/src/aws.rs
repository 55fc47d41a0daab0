//! The AWS model: moto plus our layer (`aws_model/smartscale_aws.py`: lifecycle hooks, AZ and
//! Capacity Rebalancing, launch failures, injected Auto Scaling and DynamoDB faults, DynamoDB
//! TTL, controllable private IPs, a model clock), run as a child process, and a client for its
//! control endpoints (docs/interfaces.md, "Test world control endpoints").
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

/// An instance with everything the model's instance JSON carries: [`ModelInstance`] plus the
/// address, protection, launch and rebalance-recommendation fields. (A separate type, so code
/// that builds a [`ModelInstance`] by hand keeps compiling.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInstanceDetails {
    #[serde(flatten)]
    pub instance: ModelInstance,
    /// The primary private IPv4 address (what IMDS serves at `meta-data/local-ipv4`).
    #[serde(default)]
    pub private_ip: Option<String>,
    /// `ip-10-0-0-5.<region>.compute.internal` (`ec2.internal` in us-east-1): the hostname K3s
    /// names the node after.
    #[serde(default)]
    pub private_dns_name: Option<String>,
    /// The instance's scale-in protection flag, as `DescribeAutoScalingInstances` shows it.
    #[serde(default)]
    pub protected_from_scale_in: bool,
    /// Launch time on the model clock, `2026-01-01T00:00:00.000Z`.
    #[serde(default)]
    pub launch_time: Option<String>,
    /// When EC2 sent this Spot Instance a rebalance recommendation (`2026-01-01T00:00:00Z`, the
    /// `noticeTime` IMDS serves at `meta-data/events/recommendations/rebalance`); `None` if never.
    #[serde(default)]
    pub rebalance_recommendation_time: Option<String>,
}

/// A launch-failure rule for `POST /_smartscale/launch-failures`: launches that match every
/// criterion given (`None`: any) fail the way EC2 fails them, `count` times (`None`: until
/// cleared). The scaling activity ends `Failed` with AWS's wording and the group retries the
/// zone later (10 s, doubling to 5 min on the model clock), trying other zones and, for a
/// MixedInstancesPolicy, the other instance types first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LaunchFailure {
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    /// `spot` or `on-demand`.
    pub market: Option<String>,
    pub group: Option<String>,
    pub region: Option<String>,
    /// `InsufficientInstanceCapacity` (the default), `Unsupported`, `InstanceLimitExceeded`, or
    /// any other EC2 code together with `message`.
    pub code: Option<String>,
    pub count: Option<u32>,
    /// Replaces EC2's message (" Launching EC2 instance failed." is appended, as AWS does).
    pub message: Option<String>,
}

impl LaunchFailure {
    /// `InsufficientInstanceCapacity` for every launch into `zone`, until cleared.
    pub fn insufficient_capacity_in(zone: impl Into<String>) -> Self {
        LaunchFailure {
            zone: Some(zone.into()),
            ..LaunchFailure::default()
        }
    }
}

/// An injected Auto Scaling error for `POST /_smartscale/autoscaling-faults`: the next
/// `count` calls (`None`: until cleared) of `action` (optionally for one group or region)
/// answer with `code` in AWS's Query error XML instead of running.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AutoScalingFault {
    /// An Auto Scaling API action, e.g. `SetDesiredCapacity`.
    pub action: String,
    /// `ScalingActivityInProgress` (the default), `ResourceContention` (HTTP 500), `Throttling`,
    /// or another code the action can return (then `message` is required).
    pub code: Option<String>,
    pub count: Option<u32>,
    pub group: Option<String>,
    pub region: Option<String>,
    pub message: Option<String>,
}

impl AutoScalingFault {
    /// `ScalingActivityInProgress` for the next `count` calls of `action`.
    pub fn in_progress(action: impl Into<String>, count: u32) -> Self {
        AutoScalingFault {
            action: action.into(),
            count: Some(count),
            ..AutoScalingFault::default()
        }
    }
}

/// An injected DynamoDB error for `POST /_smartscale/dynamodb-faults`, answered in DynamoDB's
/// JSON shape (`__type`, `message`; `CancellationReasons` and `Message` for a cancelled
/// transaction) before moto sees the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DynamoDbFault {
    /// A DynamoDB operation, e.g. `TransactWriteItems`, `PutItem`, `UpdateItem`, `GetItem`.
    pub operation: String,
    /// `TransactionCanceledException` (reasons `[{"Code": "TransactionConflict"}, {"Code":
    /// "None"}, ...]`, one per item), `TransactionConflictException`,
    /// `ProvisionedThroughputExceededException`, `ThrottlingException`, `RequestLimitExceeded`
    /// or `InternalServerError` (HTTP 500); the operation must be able to return it.
    pub code: String,
    pub count: Option<u32>,
    /// Only calls that touch this table.
    pub table: Option<String>,
    pub region: Option<String>,
    pub message: Option<String>,
}

impl DynamoDbFault {
    /// `code` for the next `count` calls of `operation`.
    pub fn next(operation: impl Into<String>, code: impl Into<String>, count: u32) -> Self {
        DynamoDbFault {
            operation: operation.into(),
            code: code.into(),
            count: Some(count),
            ..DynamoDbFault::default()
        }
    }
}

/// An armed rule, as the model lists it: its criteria (`instance_type`, `action`, `table`,
/// ...) sit in `criteria`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InjectedRule {
    /// Pass to the `clear_*` method to remove just this rule.
    pub id: String,
    pub code: String,
    /// Firings left; `None`: until cleared.
    pub count: Option<u32>,
    /// How often it has fired.
    pub fired: u32,
    pub message: Option<String>,
    #[serde(flatten)]
    pub criteria: serde_json::Map<String, serde_json::Value>,
}

/// A private IP the next launch of a group (or into a zone) gets, so a replacement can
/// re-use a terminated instance's address and hostname. Give exactly one of `group` and `zone`;
/// `region` picks between groups of the same name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NextPrivateIp {
    pub ip: String,
    pub group: Option<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
}

/// How long after an item's TTL the model's ticker deletes it (DynamoDB: "typically within 48
/// hours"; the model: `delay_seconds`, 0 by default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TtlSettings {
    pub delay_seconds: f64,
}

#[derive(Deserialize)]
struct Cleared {
    cleared: u32,
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

    /// Every instance with all the fields the model reports (see [`ModelInstanceDetails`]).
    pub async fn instances_details(&self) -> Result<Vec<ModelInstanceDetails>> {
        self.json(self.http.get(self.url("/_smartscale/instances")))
            .await
    }

    /// One instance with all its fields, `None` if the model does not know it.
    pub async fn instance_details(
        &self,
        instance_id: &str,
    ) -> Result<Option<ModelInstanceDetails>> {
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

    /// `POST /_smartscale/instances/{id}/rebalance-recommendation`: EC2 tells this Spot Instance
    /// it is at elevated risk of interruption. With CapacityRebalance on its group, the group
    /// launches a replacement and, once that is InService, terminates this one through the
    /// terminate hooks. Returns the instance (with `rebalance_recommendation_time` set).
    pub async fn rebalance_recommendation(
        &self,
        instance_id: &str,
    ) -> Result<ModelInstanceDetails> {
        let path = format!("/_smartscale/instances/{instance_id}/rebalance-recommendation");
        self.json(self.http.post(self.url(&path))).await
    }

    /// `POST /_smartscale/launch-failures`: arm a launch-failure rule.
    pub async fn add_launch_failure(&self, failure: &LaunchFailure) -> Result<InjectedRule> {
        self.post_json("/_smartscale/launch-failures", failure)
            .await
    }

    /// `GET /_smartscale/launch-failures`: the armed launch-failure rules.
    pub async fn launch_failures(&self) -> Result<Vec<InjectedRule>> {
        self.json(self.http.get(self.url("/_smartscale/launch-failures")))
            .await
    }

    /// `DELETE /_smartscale/launch-failures[/{id}]`: clear one rule (`Some(id)`) or all;
    /// how many were cleared (0 for an unknown id).
    pub async fn clear_launch_failures(&self, id: Option<&str>) -> Result<u32> {
        self.clear("/_smartscale/launch-failures", id).await
    }

    /// `POST /_smartscale/autoscaling-faults`: make the next calls of an action fail.
    pub async fn add_autoscaling_fault(&self, fault: &AutoScalingFault) -> Result<InjectedRule> {
        self.post_json("/_smartscale/autoscaling-faults", fault)
            .await
    }

    /// `GET /_smartscale/autoscaling-faults`: the armed Auto Scaling faults.
    pub async fn autoscaling_faults(&self) -> Result<Vec<InjectedRule>> {
        self.json(self.http.get(self.url("/_smartscale/autoscaling-faults")))
            .await
    }

    /// `DELETE /_smartscale/autoscaling-faults[/{id}]`: clear one fault or all.
    pub async fn clear_autoscaling_faults(&self, id: Option<&str>) -> Result<u32> {
        self.clear("/_smartscale/autoscaling-faults", id).await
    }

    /// `POST /_smartscale/dynamodb-faults`: make the next calls of a DynamoDB operation fail.
    pub async fn add_dynamodb_fault(&self, fault: &DynamoDbFault) -> Result<InjectedRule> {
        self.post_json("/_smartscale/dynamodb-faults", fault).await
    }

    /// `GET /_smartscale/dynamodb-faults`: the armed DynamoDB faults.
    pub async fn dynamodb_faults(&self) -> Result<Vec<InjectedRule>> {
        self.json(self.http.get(self.url("/_smartscale/dynamodb-faults")))
            .await
    }

    /// `DELETE /_smartscale/dynamodb-faults[/{id}]`: clear one fault or all.
    pub async fn clear_dynamodb_faults(&self, id: Option<&str>) -> Result<u32> {
        self.clear("/_smartscale/dynamodb-faults", id).await
    }

    /// `POST /_smartscale/dynamodb-ttl`: delete expired items `seconds` after their TTL.
    pub async fn set_dynamodb_ttl_delay(&self, seconds: f64) -> Result<TtlSettings> {
        let settings = TtlSettings {
            delay_seconds: seconds,
        };
        self.post_json("/_smartscale/dynamodb-ttl", &settings).await
    }

    /// `GET /_smartscale/dynamodb-ttl`.
    pub async fn dynamodb_ttl(&self) -> Result<TtlSettings> {
        self.json(self.http.get(self.url("/_smartscale/dynamodb-ttl")))
            .await
    }

    /// `POST /_smartscale/next-private-ip`: the next launch of the group (or into the zone) gets
    /// `ip`. The address must lie in one of its subnets and be free (an [`Error::Http`] with the
    /// model's reason otherwise, 409 if in use).
    pub async fn set_next_private_ip(&self, next: &NextPrivateIp) -> Result<NextPrivateIp> {
        self.post_json("/_smartscale/next-private-ip", next).await
    }

    /// `GET /_smartscale/next-private-ip`: addresses not used yet.
    pub async fn next_private_ips(&self) -> Result<Vec<NextPrivateIp>> {
        self.json(self.http.get(self.url("/_smartscale/next-private-ip")))
            .await
    }

    /// `DELETE /_smartscale/next-private-ip`: drop the addresses not used yet.
    pub async fn clear_next_private_ips(&self) -> Result<u32> {
        self.clear("/_smartscale/next-private-ip", None).await
    }

    /// `PUT /_smartscale/prices`: the region's on-demand prices by instance type and spot prices
    /// by zone and type, as the Price List API and DescribeSpotPriceHistory will answer them
    /// (`{"region", "on_demand": {type: $}, "spot": {zone: {type: $}}}`); answers what is set.
    pub async fn set_prices(&self, prices: &serde_json::Value) -> Result<serde_json::Value> {
        self.json(self.http.put(self.url("/_smartscale/prices")).json(prices))
            .await
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

    async fn post_json<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    /// DELETE a collection (`id: None`) or one rule of it; an unknown id clears nothing.
    async fn clear(&self, path: &str, id: Option<&str>) -> Result<u32> {
        let url = match id {
            Some(id) => self.url(&format!("{path}/{id}")),
            None => self.url(path),
        };
        let response = self.send(self.http.delete(&url)).await?;
        if id.is_some() && response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(0);
        }
        let cleared: Cleared = Self::decode(&url, response).await?;
        Ok(cleared.cleared)
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

    /// See [`ModelClient::instances_details`].
    pub async fn instances_details(&self) -> Result<Vec<ModelInstanceDetails>> {
        self.client.instances_details().await
    }

    /// See [`ModelClient::instance_details`].
    pub async fn instance_details(
        &self,
        instance_id: &str,
    ) -> Result<Option<ModelInstanceDetails>> {
        self.client.instance_details(instance_id).await
    }

    /// See [`ModelClient::rebalance_recommendation`].
    pub async fn rebalance_recommendation(
        &self,
        instance_id: &str,
    ) -> Result<ModelInstanceDetails> {
        self.client.rebalance_recommendation(instance_id).await
    }

    /// See [`ModelClient::add_launch_failure`].
    pub async fn add_launch_failure(&self, failure: &LaunchFailure) -> Result<InjectedRule> {
        self.client.add_launch_failure(failure).await
    }

    /// See [`ModelClient::launch_failures`].
    pub async fn launch_failures(&self) -> Result<Vec<InjectedRule>> {
        self.client.launch_failures().await
    }

    /// See [`ModelClient::clear_launch_failures`].
    pub async fn clear_launch_failures(&self, id: Option<&str>) -> Result<u32> {
        self.client.clear_launch_failures(id).await
    }

    /// See [`ModelClient::add_autoscaling_fault`].
    pub async fn add_autoscaling_fault(&self, fault: &AutoScalingFault) -> Result<InjectedRule> {
        self.client.add_autoscaling_fault(fault).await
    }

    /// See [`ModelClient::autoscaling_faults`].
    pub async fn autoscaling_faults(&self) -> Result<Vec<InjectedRule>> {
        self.client.autoscaling_faults().await
    }

    /// See [`ModelClient::clear_autoscaling_faults`].
    pub async fn clear_autoscaling_faults(&self, id: Option<&str>) -> Result<u32> {
        self.client.clear_autoscaling_faults(id).await
    }

    /// See [`ModelClient::add_dynamodb_fault`].
    pub async fn add_dynamodb_fault(&self, fault: &DynamoDbFault) -> Result<InjectedRule> {
        self.client.add_dynamodb_fault(fault).await
    }

    /// See [`ModelClient::dynamodb_faults`].
    pub async fn dynamodb_faults(&self) -> Result<Vec<InjectedRule>> {
        self.client.dynamodb_faults().await
    }

    /// See [`ModelClient::clear_dynamodb_faults`].
    pub async fn clear_dynamodb_faults(&self, id: Option<&str>) -> Result<u32> {
        self.client.clear_dynamodb_faults(id).await
    }

    /// See [`ModelClient::set_dynamodb_ttl_delay`].
    pub async fn set_dynamodb_ttl_delay(&self, seconds: f64) -> Result<TtlSettings> {
        self.client.set_dynamodb_ttl_delay(seconds).await
    }

    /// See [`ModelClient::dynamodb_ttl`].
    pub async fn dynamodb_ttl(&self) -> Result<TtlSettings> {
        self.client.dynamodb_ttl().await
    }

    /// See [`ModelClient::set_next_private_ip`].
    pub async fn set_next_private_ip(&self, next: &NextPrivateIp) -> Result<NextPrivateIp> {
        self.client.set_next_private_ip(next).await
    }

    /// See [`ModelClient::next_private_ips`].
    pub async fn next_private_ips(&self) -> Result<Vec<NextPrivateIp>> {
        self.client.next_private_ips().await
    }

    /// See [`ModelClient::clear_next_private_ips`].
    pub async fn clear_next_private_ips(&self) -> Result<u32> {
        self.client.clear_next_private_ips().await
    }

    /// Stop the process (SIGTERM, then SIGKILL) without blocking the runtime.
    pub async fn shutdown(self) {
        self.process.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_autoscaling::error::ProvideErrorMetadata;
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;

    const REGION: &str = "eu-west-3";

    /// The control endpoints' JSON round-trips through these types, and the Rust SDK reads the
    /// model's injected Query errors (the Python suite checks the behaviour itself).
    #[tokio::test]
    async fn control_endpoints_round_trip() {
        let model = AwsModel::start().await.expect("start the AWS model");
        let client = model.client();
        client
            .create_launch_template(REGION, "contract-lt", "ami-12c6146b", "t3.medium")
            .await
            .expect("CreateLaunchTemplate");
        let asg = aws_sdk_autoscaling::Client::new(&model.sdk_config(REGION));
        asg.create_auto_scaling_group()
            .auto_scaling_group_name("contract")
            .min_size(0)
            .max_size(4)
            .desired_capacity(1)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name("contract-lt")
                    .build(),
            )
            .availability_zones(format!("{REGION}a"))
            .send()
            .await
            .expect("CreateAutoScalingGroup");
        let first = client.instances_details().await.expect("instances")[0].clone();
        assert_eq!(first.instance.asg_name.as_deref(), Some("contract"));
        let ip = first.private_ip.clone().expect("a private IP");
        assert!(
            first
                .private_dns_name
                .expect("a DNS name")
                .starts_with("ip-")
        );
        assert!(first.launch_time.is_some() && first.rebalance_recommendation_time.is_none());
        let refused = client
            .rebalance_recommendation(&first.instance.instance_id)
            .await
            .expect_err("an On-Demand Instance gets no rebalance recommendation");
        assert!(refused.to_string().contains("409"), "{refused}");

        let failure = LaunchFailure {
            count: Some(1),
            ..LaunchFailure::insufficient_capacity_in(format!("{REGION}a"))
        };
        let rule = client.add_launch_failure(&failure).await.expect("arm");
        assert_eq!(
            (rule.code.as_str(), rule.count, rule.fired),
            ("InsufficientInstanceCapacity", Some(1), 0)
        );
        assert_eq!(
            rule.criteria["zone"],
            serde_json::json!(format!("{REGION}a"))
        );
        assert_eq!(client.launch_failures().await.expect("list").len(), 1);
        assert_eq!(
            client
                .clear_launch_failures(Some("launch-failure-999"))
                .await
                .expect("clear"),
            0
        );
        assert_eq!(
            client
                .clear_launch_failures(Some(&rule.id))
                .await
                .expect("clear"),
            1
        );

        let fault = AutoScalingFault::in_progress("SetDesiredCapacity", 1);
        client.add_autoscaling_fault(&fault).await.expect("arm");
        let err = asg
            .set_desired_capacity()
            .auto_scaling_group_name("contract")
            .desired_capacity(2)
            .send()
            .await
            .expect_err("the injected fault");
        assert_eq!(err.code(), Some("ScalingActivityInProgress"));
        assert!(
            err.message()
                .is_some_and(|m| m.ends_with("is in progress and blocks this action"))
        );
        assert!(client.autoscaling_faults().await.expect("list").is_empty());

        let dynamo = DynamoDbFault::next("TransactWriteItems", "TransactionCanceledException", 2);
        let armed = client.add_dynamodb_fault(&dynamo).await.expect("arm");
        assert_eq!(armed.criteria["operation"], "TransactWriteItems");
        assert_eq!(client.dynamodb_faults().await.expect("list").len(), 1);
        assert_eq!(client.clear_dynamodb_faults(None).await.expect("clear"), 1);
        assert_eq!(
            client
                .set_dynamodb_ttl_delay(60.0)
                .await
                .expect("set")
                .delay_seconds,
            60.0
        );
        assert_eq!(
            client.dynamodb_ttl().await.expect("get").delay_seconds,
            60.0
        );

        let taken = client
            .set_next_private_ip(&NextPrivateIp {
                ip,
                group: Some("contract".into()),
                region: Some(REGION.into()),
                zone: None,
            })
            .await
            .expect_err("the address is in use");
        assert!(taken.to_string().contains("409"), "{taken}");
        assert!(client.next_private_ips().await.expect("list").is_empty());
        assert_eq!(client.clear_next_private_ips().await.expect("clear"), 0);
        model.shutdown().await;
    }
}
