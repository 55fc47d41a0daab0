//! amazon-ec2-metadata-mock (AEMM), the AWS-maintained IMDS mock, as a child process of the test
//! world: one instance's IMDSv2 on 127.0.0.1, with the static metadata of an [`ImdsInstance`]
//! (or a [`ModelInstance`] of the AWS model) and one [`Scenario`] (a spot interruption, a
//! rebalance recommendation, an Auto Scaling termination, or none).
//!
//! AEMM is pinned at v1.13.0 by the Go module `tests/aemm` and built from the Go module proxy by
//! `scripts/build-go-binary.sh aemm tests/aemm github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock`
//! into `$SMARTSCALE_BACKENDS_DIR/bin/aemm`. Everything a scenario needs is fixed when the process
//! starts (AEMM has no control API): notices appear at start, after a delay or at a trigger time,
//! and stay. What AEMM cannot do (follow the ASG model live, forget tokens, move its clock, go
//! away and come back on the same port) is what [`crate::imds::FakeImds`] is for; the parity
//! test (`tests/tests/imds_parity.rs`) proves both answer the agent's paths the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::aws::{ModelInstance, backends_dir};
use crate::imds::{FakeImds, ImdsInstance};
use crate::process::{ChildProcess, free_port};
use crate::{Error, Result};

/// The AEMM release `tests/aemm/go.mod` pins.
pub const VERSION: &str = "v1.13.0";
/// AEMM's main package inside its module.
pub const PACKAGE: &str = "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock";
/// The variable that names another AEMM binary.
pub const BINARY_ENV: &str = "SMARTSCALE_AEMM";
/// The one-line install hint every "missing AEMM" error carries.
pub const INSTALL_HINT: &str = "run scripts/setup-backends.sh (it builds amazon-ec2-metadata-mock \
    v1.13.0 from the Go module proxy into ${SMARTSCALE_BACKENDS_DIR:-/tmp/smartscale-backends}/bin/aemm; \
    by hand: scripts/build-go-binary.sh aemm tests/aemm \
    github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock), or set SMARTSCALE_AEMM to an \
    ec2-metadata-mock v1.13.0 binary";

/// How long AEMM may take to answer its first request (a Go binary: well under a second here).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many free ports are tried when another process takes the one chosen first.
const PORT_ATTEMPTS: usize = 3;
/// A delay that never ends within a test: how a source the scenario does not use is kept 404
/// (AEMM serves every notice of its command at once unless delayed).
const NEVER_SECONDS: u64 = 315_360_000;
/// Where AEMM serves the ASG name tag (AEMM has no such path of its own: its `tags-instance-name`
/// path is moved here, and its `tags-instance-test` path is dropped).
const ASG_TAG_PATH: &str = "/latest/meta-data/tags/instance/aws:autoscaling:groupName";

/// The AEMM binary: `$SMARTSCALE_AEMM`, else `$SMARTSCALE_BACKENDS_DIR/bin/aemm`.
pub fn aemm_path() -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .filter(|path| !path.is_empty())
        .map_or_else(|| backends_dir().join("bin/aemm"), PathBuf::from)
}

/// The AEMM binary if it exists; [`Error::MissingDependency`] with the install hint if not.
pub fn check_aemm() -> Result<PathBuf> {
    check_binary(aemm_path())
}

fn check_binary(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingDependency(
            "amazon-ec2-metadata-mock",
            format!("no binary at {}; {INSTALL_HINT}", path.display()),
        ))
    }
}

/// The spot interruption behaviour `spot/instance-action` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

impl SpotAction {
    pub const ALL: [SpotAction; 3] = [
        SpotAction::Terminate,
        SpotAction::Stop,
        SpotAction::Hibernate,
    ];

    /// The value in the notice (and of AEMM's `spot.action`).
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAction::Terminate => "terminate",
            SpotAction::Stop => "stop",
            SpotAction::Hibernate => "hibernate",
        }
    }
}

/// When a scenario's notice appears (AEMM's delay and trigger-time settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Onset {
    /// As soon as AEMM serves.
    Now,
    /// This long after AEMM started (`--mock-delay-sec`, `--rebalance-delay-sec`,
    /// `--asg-termination-delay-sec`; whole seconds, rounded up).
    After(Duration),
    /// At this time (`--mock-trigger-time`, `--rebalance-trigger-time`, and the config key
    /// `asg-termination-trigger-time`: v1.13.0 declares that flag as an integer, so an RFC 3339
    /// time can only be given in the config file); second precision.
    At(Timestamp),
}

/// What the instance's IMDS announces.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// No notice: `spot/instance-action` and `events/recommendations/rebalance` are 404,
    /// `autoscaling/target-lifecycle-state` is `InService` in an ASG (404 outside one).
    None,
    /// `spot/instance-action` = `{"action": …, "time": …}` (and `spot/termination-time`).
    /// `time: None` is AEMM's default, the time of each request plus two minutes.
    SpotInterruption {
        action: SpotAction,
        time: Option<Timestamp>,
        onset: Onset,
    },
    /// `events/recommendations/rebalance` = `{"noticeTime": …}`. `notice_time: None` is AEMM's
    /// default, the time of each request.
    Rebalance {
        notice_time: Option<Timestamp>,
        onset: Onset,
    },
    /// `autoscaling/target-lifecycle-state` turns from `InService` to `Terminated` (and stays).
    /// Only for an instance in an ASG.
    AsgTermination { onset: Onset },
}

impl Scenario {
    /// A spot interruption with a fixed action time, shown at once.
    pub fn spot(action: SpotAction, time: Timestamp) -> Self {
        Scenario::SpotInterruption {
            action,
            time: Some(time),
            onset: Onset::Now,
        }
    }

    /// A rebalance recommendation with a fixed notice time, shown at once.
    pub fn rebalance(notice_time: Timestamp) -> Self {
        Scenario::Rebalance {
            notice_time: Some(notice_time),
            onset: Onset::Now,
        }
    }

    /// The ASG terminating the instance, shown at once.
    pub fn asg_termination() -> Self {
        Scenario::AsgTermination { onset: Onset::Now }
    }

    fn onset(&self) -> Option<Onset> {
        match self {
            Scenario::None => None,
            Scenario::SpotInterruption { onset, .. }
            | Scenario::Rebalance { onset, .. }
            | Scenario::AsgTermination { onset } => Some(*onset),
        }
    }

    /// Put the same notice into a [`FakeImds`] now (whatever the onset), so both answer alike.
    /// A time AEMM would compute per request (`None`) becomes the fake's fixed equivalent: now
    /// plus two minutes for a spot action, now for a rebalance notice.
    pub fn apply_to_fake(&self, fake: &FakeImds) {
        match self {
            Scenario::None => {}
            Scenario::SpotInterruption { action, time, .. } => {
                let time =
                    time.unwrap_or_else(|| Timestamp::now() + SignedDuration::from_secs(120));
                fake.inject_spot_instance_action(action.as_str(), time);
            }
            Scenario::Rebalance { notice_time, .. } => {
                fake.inject_rebalance_recommendation(notice_time.unwrap_or_else(Timestamp::now));
            }
            Scenario::AsgTermination { .. } => fake.set_target_lifecycle_state(Some("Terminated")),
        }
    }
}

/// The private address the test world gives an instance: stable, derived from its id (moto
/// assigns none the IMDS side can see). The same derivation as [`FakeImds`]; the parity test
/// checks they agree.
pub fn local_ipv4(instance: &ImdsInstance) -> String {
    let hash = instance.instance_id.bytes().fold(0u32, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u32::from(byte))
    });
    format!("10.0.{}.{}", (hash >> 8) % 250, hash % 250 + 4)
}

/// The private DNS name AWS gives that address: `ip-a-b-c-d.ec2.internal` in us-east-1,
/// `ip-a-b-c-d.<region>.compute.internal` elsewhere (Amazon VPC User Guide, "DNS attributes for
/// your VPC"; Amazon EC2 User Guide, "Amazon EC2 instance hostname types").
pub fn local_hostname(instance: &ImdsInstance) -> String {
    let name = format!("ip-{}", local_ipv4(instance).replace('.', "-"));
    if instance.region == "us-east-1" {
        format!("{name}.ec2.internal")
    } else {
        format!("{name}.{}.compute.internal", instance.region)
    }
}

/// How an [`Aemm`] is started.
#[derive(Debug, Clone)]
pub struct AemmOptions {
    pub instance: ImdsInstance,
    pub scenario: Scenario,
    /// Where the config file and `aemm.log` go; a temporary directory (removed on drop) if `None`.
    pub dir: Option<PathBuf>,
}

impl AemmOptions {
    pub fn new(instance: ImdsInstance, scenario: Scenario) -> Self {
        AemmOptions {
            instance,
            scenario,
            dir: None,
        }
    }

    /// The options for one of the AWS model's instances.
    pub fn for_model_instance(instance: &ModelInstance, scenario: Scenario) -> Self {
        Self::new(ImdsInstance::from_model(instance), scenario)
    }
}

/// A running AEMM (IMDSv2 only, 127.0.0.1, a free port); stopped by PID when dropped.
#[derive(Debug)]
pub struct Aemm {
    process: ChildProcess,
    address: SocketAddr,
    instance: ImdsInstance,
    scenario: Scenario,
    subcommand: Option<&'static str>,
    config_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Aemm {
    /// Start AEMM for `instance` with `scenario`, its config and log in a temporary directory.
    pub async fn start(instance: ImdsInstance, scenario: Scenario) -> Result<Self> {
        Self::start_with(AemmOptions::new(instance, scenario)).await
    }

    /// Start AEMM and wait (with a deadline) until it answers HTTP. A missing binary is
    /// [`Error::MissingDependency`]; a scenario the instance cannot have is [`Error::Invalid`].
    pub async fn start_with(opts: AemmOptions) -> Result<Self> {
        let binary = check_aemm()?;
        if matches!(opts.scenario, Scenario::AsgTermination { .. })
            && opts.instance.asg_name.is_none()
        {
            return Err(Error::Invalid(format!(
                "instance {} is in no Auto Scaling group, so it has no target-lifecycle-state to terminate",
                opts.instance.instance_id
            )));
        }
        let (temp, dir) = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("smartscale-aemm-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a directory for AEMM", e))?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let config_path = dir.join("aemm-config.json");
        let document = config(&opts.instance, &opts.scenario);
        let text = serde_json::to_string_pretty(&document).map_err(|e| {
            Error::Invalid(format!(
                "AEMM config for {}: {e}",
                opts.instance.instance_id
            ))
        })?;
        std::fs::write(&config_path, text)
            .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
        let subcommand = subcommand(&opts.instance, &opts.scenario);
        let log_path = dir.join("aemm.log");

        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let command = command(
                &binary,
                &dir,
                &config_path,
                subcommand,
                &opts.scenario,
                port,
            );
            let process = ChildProcess::spawn("amazon-ec2-metadata-mock", command, &log_path)?;
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_until_serving(process, address).await {
                Ok(process) => {
                    tracing::info!(
                        %address,
                        instance = %opts.instance.instance_id,
                        command = subcommand.unwrap_or("(all)"),
                        pid = process.pid(),
                        "AEMM ready"
                    );
                    return Ok(Aemm {
                        process,
                        address,
                        instance: opts.instance,
                        scenario: opts.scenario,
                        subcommand,
                        config_path,
                        _dir: temp,
                    });
                }
                // Another process took the port between free_port() and AEMM's bind: retry.
                Err(Error::Exited { log, .. }) if log.contains("address already in use") => {
                    tracing::debug!(
                        port,
                        "AEMM lost its port to another process; trying another"
                    );
                    last = Some(Error::PortInUse(port));
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("AEMM did not start".to_string())))
    }

    /// `http://127.0.0.1:PORT/`: the value for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn instance(&self) -> &ImdsInstance {
        &self.instance
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The AEMM command it runs: `spot`, `asglifecycle`, or `None` for the root command (every
    /// mock at once: an ASG instance that can also get spot notices).
    pub fn subcommand(&self) -> Option<&'static str> {
        self.subcommand
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// AEMM's own log: every request it served (with its headers, session tokens included).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `Ok` while AEMM runs; its log otherwise.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// Stop AEMM (SIGTERM, then SIGKILL) without blocking the runtime.
    pub async fn shutdown(self) {
        self.process.shutdown().await;
    }
}

/// The command AEMM runs: a spot instance in an ASG needs every mock (the root command), one
/// that is only in an ASG the `asglifecycle` command, any other the `spot` command (whose notices
/// stay 404 unless the scenario shows them).
fn subcommand(instance: &ImdsInstance, scenario: &Scenario) -> Option<&'static str> {
    let in_asg = instance.asg_name.is_some();
    let spot = instance.life_cycle == "spot"
        || matches!(
            scenario,
            Scenario::SpotInterruption { .. } | Scenario::Rebalance { .. }
        );
    match (in_asg, spot) {
        (true, true) => None,
        (true, false) => Some("asglifecycle"),
        (false, _) => Some("spot"),
    }
}

fn command(
    binary: &Path,
    dir: &Path,
    config_path: &Path,
    subcommand: Option<&str>,
    scenario: &Scenario,
    port: u16,
) -> Command {
    let mut command = Command::new(binary);
    // AEMM reads AEMM_* variables over its config file, and looks in $HOME for one: neither may
    // change what a test sees.
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("AEMM_")
        {
            command.env_remove(name);
        }
    }
    command.env("HOME", dir);
    if let Some(subcommand) = subcommand {
        command.arg(subcommand);
    }
    command
        .arg("--config-file")
        .arg(config_path)
        .args(["--imdsv2", "--hostname", "127.0.0.1", "--port"])
        .arg(port.to_string())
        // Every caller comes from 127.0.0.1; no limit on how many may see the notices.
        .args(["--mock-ip-count", "-1"]);
    let onset = scenario.onset();
    let spot = matches!(scenario, Scenario::SpotInterruption { .. })
        .then_some(onset)
        .flatten();
    let rebalance = matches!(scenario, Scenario::Rebalance { .. })
        .then_some(onset)
        .flatten();
    let asg = matches!(scenario, Scenario::AsgTermination { .. })
        .then_some(onset)
        .flatten();
    command.args(onset_flags(
        spot,
        "--mock-delay-sec",
        Some("--mock-trigger-time"),
    ));
    command.args(onset_flags(
        rebalance,
        "--rebalance-delay-sec",
        Some("--rebalance-trigger-time"),
    ));
    // The ASG trigger time goes into the config file (see `Onset::At`).
    command.args(onset_flags(asg, "--asg-termination-delay-sec", None));
    command
}

/// The flags for one source: never (no onset), a delay, or a trigger time.
fn onset_flags(onset: Option<Onset>, delay_flag: &str, trigger_flag: Option<&str>) -> Vec<String> {
    match onset {
        None => vec![delay_flag.to_string(), NEVER_SECONDS.to_string()],
        Some(Onset::Now) => vec![delay_flag.to_string(), "0".to_string()],
        Some(Onset::After(delay)) => {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            vec![delay_flag.to_string(), seconds.to_string()]
        }
        Some(Onset::At(time)) => match trigger_flag {
            Some(flag) => vec![flag.to_string(), rfc3339(time)],
            None => Vec::new(),
        },
    }
}

fn rfc3339(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// AEMM's config file: the instance's static metadata and the scenario's notice contents.
fn config(instance: &ImdsInstance, scenario: &Scenario) -> Value {
    let ip = local_ipv4(instance);
    let hostname = local_hostname(instance);
    let (tag_path, tag_value) = match &instance.asg_name {
        Some(asg) => (ASG_TAG_PATH, asg.as_str()),
        None => ("", ""),
    };
    let mut document = json!({
        "metadata": {
            "paths": {
                "tags-instance-name": tag_path,
                "tags-instance-test": "",
            },
            "values": {
                "ami-id": instance.ami_id,
                "hostname": hostname,
                "instance-id": instance.instance_id,
                "instance-life-cycle": instance.life_cycle,
                "instance-type": instance.instance_type,
                "local-hostname": hostname,
                "local-ipv4": ip,
                "mac-local-hostname": hostname,
                "mac-local-ipv4s": ip,
                "placement-availability-zone": instance.availability_zone,
                "placement-region": instance.region,
                "tags-instance-name": tag_value,
            },
        },
        "dynamic": {
            "values": {
                "instance-identity-document": {
                    "accountId": instance.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": instance.availability_zone,
                    "imageId": instance.ami_id,
                    "instanceId": instance.instance_id,
                    "instanceType": instance.instance_type,
                    "pendingTime": "2026-01-01T00:00:00Z",
                    "privateIp": ip,
                    "region": instance.region,
                    "version": "2017-09-30",
                },
            },
        },
    });
    let mut spot = serde_json::Map::new();
    match scenario {
        Scenario::SpotInterruption { action, time, .. } => {
            spot.insert("action".into(), json!(action.as_str()));
            if let Some(time) = time {
                spot.insert("time".into(), json!(rfc3339(*time)));
            }
        }
        Scenario::Rebalance {
            notice_time: Some(time),
            ..
        } => {
            spot.insert("rebalance-rec-time".into(), json!(rfc3339(*time)));
        }
        Scenario::AsgTermination {
            onset: Onset::At(time),
        } => {
            document["asg-termination-trigger-time"] = json!(rfc3339(*time));
        }
        _ => {}
    }
    if !spot.is_empty() {
        document["spot"] = Value::Object(spot);
    }
    document
}

/// Poll until AEMM answers any HTTP request (with IMDSv2 only, `/` answers 401), or it exits.
async fn wait_until_serving(
    mut process: ChildProcess,
    address: SocketAddr,
) -> Result<ChildProcess> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Invalid(format!("building an HTTP client: {e}")))?;
    let url = format!("http://{address}/");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        process.check_running()?;
        if client.get(&url).send().await.is_ok() {
            return Ok(process);
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                name: process.name().to_string(),
                seconds: START_TIMEOUT.as_secs(),
                log: process.log_tail(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spot_in_asg() -> ImdsInstance {
        let mut instance = ImdsInstance::example("i-0aemm");
        instance.life_cycle = "spot".into();
        instance.asg_name = Some("workers".into());
        instance
    }

    #[test]
    fn the_command_covers_exactly_the_sources_the_instance_has() {
        let on_demand = ImdsInstance::example("i-0a");
        assert_eq!(subcommand(&on_demand, &Scenario::None), Some("spot"));
        let mut in_asg = on_demand.clone();
        in_asg.asg_name = Some("workers".into());
        assert_eq!(subcommand(&in_asg, &Scenario::None), Some("asglifecycle"));
        assert_eq!(subcommand(&spot_in_asg(), &Scenario::None), None);
        let time = Timestamp::UNIX_EPOCH;
        assert_eq!(subcommand(&in_asg, &Scenario::rebalance(time)), None);
    }

    #[test]
    fn sources_the_scenario_does_not_use_never_fire() {
        let flags = |scenario: &Scenario| -> Vec<String> {
            let cmd = command(
                Path::new("aemm"),
                Path::new("/tmp"),
                Path::new("/tmp/c.json"),
                None,
                scenario,
                1338,
            );
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let never = NEVER_SECONDS.to_string();
        let args = flags(&Scenario::None);
        for flag in [
            "--mock-delay-sec",
            "--rebalance-delay-sec",
            "--asg-termination-delay-sec",
        ] {
            let at = args.iter().position(|a| a == flag).expect(flag);
            assert_eq!(args[at + 1], never, "{flag}");
        }
        let at = Timestamp::from_second(1_800_000_000).expect("time");
        let args = flags(&Scenario::SpotInterruption {
            action: SpotAction::Stop,
            time: None,
            onset: Onset::At(at),
        });
        let i = args
            .iter()
            .position(|a| a == "--mock-trigger-time")
            .expect("trigger");
        assert_eq!(args[i + 1], "2027-01-15T08:00:00Z");
        let args = flags(&Scenario::AsgTermination {
            onset: Onset::After(Duration::from_millis(1500)),
        });
        let i = args
            .iter()
            .position(|a| a == "--asg-termination-delay-sec")
            .expect("delay");
        assert_eq!(args[i + 1], "2", "rounded up to whole seconds");
    }

    #[test]
    fn the_config_carries_the_instance_and_the_notice() {
        let time = Timestamp::from_second(1_800_000_120).expect("time");
        let doc = config(&spot_in_asg(), &Scenario::spot(SpotAction::Hibernate, time));
        assert_eq!(doc["metadata"]["values"]["instance-id"], "i-0aemm");
        assert_eq!(doc["metadata"]["values"]["tags-instance-name"], "workers");
        assert_eq!(doc["metadata"]["paths"]["tags-instance-name"], ASG_TAG_PATH);
        assert_eq!(doc["spot"]["action"], "hibernate");
        assert_eq!(doc["spot"]["time"], "2027-01-15T08:02:00Z");
        let doc = config(&ImdsInstance::example("i-0b"), &Scenario::None);
        assert_eq!(doc["metadata"]["paths"]["tags-instance-name"], "");
        assert!(doc.get("spot").is_none());
    }

    #[test]
    fn hostnames_follow_the_aws_naming_per_region() {
        let mut instance = ImdsInstance::example("i-0host");
        let ip = local_ipv4(&instance).replace('.', "-");
        assert_eq!(local_hostname(&instance), format!("ip-{ip}.ec2.internal"));
        instance.region = "eu-west-3".into();
        assert_eq!(
            local_hostname(&instance),
            format!("ip-{ip}.eu-west-3.compute.internal")
        );
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        match check_binary(PathBuf::from("/nonexistent/smartscale/bin/aemm")) {
            Err(Error::MissingDependency(_, hint)) => {
                assert!(hint.contains("scripts/setup-backends.sh"), "{hint}");
            }
            other => panic!("expected MissingDependency, got {other:?}"),
        }
    }
}
