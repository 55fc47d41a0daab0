//! Our fake IMDS against amazon-ec2-metadata-mock (AEMM v1.13.0, the AWS-maintained mock): both
//! configured with the same instance and the same scenario, asked every path the agent reads
//! (`agent/src/imds.rs`, `agent/src/sources/`), the token PUT and its rules, and the 404s of absent
//! notices. Same status, same body (JSON compared as JSON, timestamps by format where AEMM makes
//! them up per request).
//!
//! Where the two differ, AWS's documentation decides. Where AEMM is the one that deviates from it,
//! the `aemm_deviates_*` tests pin AEMM's answer (and ours) explicitly, each citing the page, so
//! that a future AEMM release that changes shows up here. The documents cited:
//!
//! - IMDSv2: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html>
//!   ("How Instance Metadata Service Version 2 works")
//! - Retrieve: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html>
//!   ("Responses and error messages")
//! - Spot: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>
//!   (`instance-action`, `termination-time`)
//! - Rebalance: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html>
//! - Lifecycle: <https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html>
//!
//! Needs the AEMM binary (`scripts/setup-backends.sh`).

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use serde_json::Value;
use smartscale_agent::imds::Imds;
use smartscale_testworld::aemm::{Aemm, Onset, Scenario, SpotAction, local_hostname};
use smartscale_testworld::aws::ModelInstance;
use smartscale_testworld::imds::{FakeImds, ImdsInstance, ImdsOptions};

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// Every path below `/latest/` the agent reads.
const AGENT_PATHS: [&str; 10] = [
    "meta-data/instance-id",
    "meta-data/placement/availability-zone",
    "meta-data/placement/region",
    "meta-data/instance-type",
    "meta-data/instance-life-cycle",
    "meta-data/local-hostname",
    "meta-data/tags/instance/aws:autoscaling:groupName",
    "meta-data/autoscaling/target-lifecycle-state",
    "meta-data/spot/instance-action",
    "meta-data/events/recommendations/rebalance",
];

/// Paths whose bodies are JSON (compared as JSON).
const JSON_PATHS: [&str; 2] = [
    "meta-data/spot/instance-action",
    "meta-data/events/recommendations/rebalance",
];

// ---------------------------------------------------------------- fixtures

/// A stand-alone on-demand instance in us-east-1 (no ASG, no spot).
fn on_demand() -> ImdsInstance {
    ImdsInstance::example("i-0paritystandalone")
}

/// A spot worker of the AWS model's group, as the model reports it.
fn spot_worker() -> ImdsInstance {
    ImdsInstance::from_model(&ModelInstance {
        instance_id: "i-0parityspotworker".into(),
        region: None,
        asg_name: Some("workers".into()),
        availability_zone: "eu-west-3b".into(),
        subnet_id: None,
        instance_type: "m5.large".into(),
        market: "spot".into(),
        lifecycle_state: "InService".into(),
        target_lifecycle_state: "InService".into(),
        ec2_state: "running".into(),
    })
}

/// An on-demand worker of an ASG in us-east-1.
fn asg_worker() -> ImdsInstance {
    let mut instance = ImdsInstance::example("i-0parityasgworker");
    instance.asg_name = Some("workers".into());
    instance
}

/// AEMM and our fake for the same instance, both showing `scenario`.
struct Pair {
    aemm: Aemm,
    fake: FakeImds,
    http: reqwest::Client,
}

impl Pair {
    async fn start(instance: ImdsInstance, scenario: Scenario) -> Pair {
        let aemm = Aemm::start(instance.clone(), scenario.clone())
            .await
            .unwrap_or_else(|e| panic!("AEMM: {e}"));
        let fake = FakeImds::start(ImdsOptions::new(instance))
            .await
            .expect("fake IMDS");
        scenario.apply_to_fake(&fake);
        Pair {
            aemm,
            fake,
            http: http(),
        }
    }

    fn bases(&self) -> [(&'static str, String); 2] {
        [
            ("AEMM", self.aemm.endpoint()),
            ("fake", self.fake.endpoint()),
        ]
    }

    async fn tokens(&self) -> (String, String) {
        (
            token(&self.http, &self.aemm.endpoint()).await,
            token(&self.http, &self.fake.endpoint()).await,
        )
    }

    /// GET `path` with a fresh token from each; (AEMM's answer, the fake's answer).
    async fn get(&self, path: &str) -> (Answer, Answer) {
        let (aemm_token, fake_token) = self.tokens().await;
        (
            get(&self.http, &self.aemm.endpoint(), path, Some(&aemm_token)).await,
            get(&self.http, &self.fake.endpoint(), path, Some(&fake_token)).await,
        )
    }

    /// Assert that every agent path answers alike.
    async fn assert_agent_paths_match(&self, context: &str) {
        for path in AGENT_PATHS {
            let (aemm, fake) = self.get(path).await;
            assert_same(context, path, &aemm, &fake);
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: String,
    ttl: Option<String>,
    body: String,
}

async fn request(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let url = format!("{}latest/{}", base, path.trim_start_matches('/'));
    let mut request = http.request(method, &url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let ttl = header(TTL_HEADER);
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        ttl,
        body,
    }
}

async fn get(http: &reqwest::Client, base: &str, path: &str, token: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
    request(http, base, Method::GET, path, &headers).await
}

async fn put_token(http: &reqwest::Client, base: &str, ttl: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = ttl.map(|t| (TTL_HEADER, t)).into_iter().collect();
    request(http, base, Method::PUT, "api/token", &headers).await
}

async fn token(http: &reqwest::Client, base: &str) -> String {
    let answer = put_token(http, base, Some("60")).await;
    assert_eq!(answer.status, 200, "token from {base}: {answer:?}");
    answer.body
}

/// Same status and same body; JSON bodies compared as JSON.
fn assert_same(context: &str, path: &str, aemm: &Answer, fake: &Answer) {
    assert_eq!(
        aemm.status, fake.status,
        "{context}: {path}: status differs\n  AEMM: {aemm:?}\n  fake: {fake:?}"
    );
    if aemm.status == 200 && JSON_PATHS.contains(&path) {
        let parse = |who: &str, a: &Answer| -> Value {
            serde_json::from_str(&a.body).unwrap_or_else(|e| {
                panic!("{context}: {path}: {who} body is not JSON ({e}): {a:?}")
            })
        };
        assert_eq!(
            parse("AEMM", aemm),
            parse("fake", fake),
            "{context}: {path}: JSON differs"
        );
    } else {
        assert_eq!(
            aemm.body, fake.body,
            "{context}: {path}: body differs\n  AEMM: {aemm:?}\n  fake: {fake:?}"
        );
    }
}

/// `2026-01-01T00:02:00Z`: the format AWS documents for every IMDS time.
fn is_imds_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn at(seconds_from_now: i64) -> Timestamp {
    // Whole seconds: IMDS times have no fraction.
    Timestamp::from_second(Timestamp::now().as_second() + seconds_from_now).expect("time")
}

/// Poll `probe` until it gives `Some`, or panic at the deadline.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- static facts

#[tokio::test]
async fn instance_facts_match_for_every_kind_of_instance() {
    for instance in [on_demand(), spot_worker(), asg_worker()] {
        let id = instance.instance_id.clone();
        let pair = Pair::start(instance.clone(), Scenario::None).await;
        pair.assert_agent_paths_match(&id).await;
        // Not read by the agent, but the same instance must be coherent on both.
        for path in [
            "meta-data/local-ipv4",
            "meta-data/hostname",
            "meta-data/ami-id",
        ] {
            let (aemm, fake) = pair.get(path).await;
            assert_same(&id, path, &aemm, &fake);
        }
        // The identity document names the same instance (AEMM adds null fields of its own).
        let (aemm, fake) = pair.get("dynamic/instance-identity/document").await;
        let (aemm, fake): (Value, Value) = (
            serde_json::from_str(&aemm.body).expect("AEMM's document"),
            serde_json::from_str(&fake.body).expect("the fake's document"),
        );
        for field in [
            "accountId",
            "availabilityZone",
            "imageId",
            "instanceId",
            "instanceType",
            "privateIp",
            "region",
        ] {
            assert_eq!(aemm[field], fake[field], "{id}: identity document {field}");
        }
        // And the agent sees the same instance through either.
        let mut seen = Vec::new();
        for (who, base) in pair.bases() {
            let client = Imds::new(&base, Duration::from_secs(60)).expect("client");
            let info = client
                .instance()
                .await
                .unwrap_or_else(|e| panic!("{id}: {who}: {e}"));
            seen.push(info);
        }
        assert_eq!(seen[0], seen[1], "{id}: the agent's view differs");
        assert_eq!(seen[0].instance_id, id);
        assert_eq!(seen[0].hostname, local_hostname(&instance));
        assert_eq!(seen[0].asg_name, instance.asg_name);
    }
}

#[tokio::test]
async fn private_hostnames_follow_the_region() {
    // us-east-1 names end in .ec2.internal, other regions in .<region>.compute.internal (Amazon
    // VPC User Guide, "DNS attributes for your VPC"). Our fake used compute.internal everywhere.
    let pair = Pair::start(on_demand(), Scenario::None).await;
    let (aemm, fake) = pair.get("meta-data/local-hostname").await;
    assert!(fake.body.ends_with(".ec2.internal"), "{fake:?}");
    assert_same("us-east-1", "meta-data/local-hostname", &aemm, &fake);
    let pair = Pair::start(spot_worker(), Scenario::None).await;
    let (aemm, fake) = pair.get("meta-data/local-hostname").await;
    assert!(
        fake.body.ends_with(".eu-west-3.compute.internal"),
        "{fake:?}"
    );
    assert_same("eu-west-3", "meta-data/local-hostname", &aemm, &fake);
}

// ---------------------------------------------------------------- the token

#[tokio::test]
async fn token_requests_follow_the_same_rules() {
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    // [IMDSv2]: "The PUT request must include a header that specifies the time to live (TTL) for
    // the token, in seconds, up to a maximum of six hours (21,600 seconds)"; a minimum of one
    // second. [Retrieve]: "400 - Missing or Invalid Parameters – The PUT request is not valid."
    let cases: [(Option<&str>, u16); 11] = [
        (Some("1"), 200),
        (Some("60"), 200),
        (Some("21600"), 200),
        (Some("0060"), 200),
        (None, 400),
        (Some(""), 400),
        (Some("0"), 400),
        (Some("-1"), 400),
        (Some("21601"), 400),
        (Some("sixty"), 400),
        (Some("1.5"), 400),
    ];
    for (ttl, status) in cases {
        let mut answers = Vec::new();
        for (who, base) in pair.bases() {
            let answer = put_token(&pair.http, &base, ttl).await;
            assert_eq!(answer.status, status, "{who}: TTL {ttl:?}: {answer:?}");
            answers.push(answer);
        }
        let (aemm, fake) = (&answers[0], &answers[1]);
        if status == 200 {
            // The token is opaque; the granted lifetime is echoed in the TTL header.
            assert!(!aemm.body.is_empty() && !fake.body.is_empty());
            let granted = ttl
                .and_then(|t| t.parse::<u64>().ok())
                .map(|t| t.to_string());
            assert_eq!(aemm.ttl, granted, "AEMM: TTL {ttl:?}");
            assert_eq!(fake.ttl, granted, "fake: TTL {ttl:?}");
            assert_eq!(aemm.content_type, "text/plain");
            assert_eq!(fake.content_type, "text/plain");
        } else {
            assert_same(&format!("TTL {ttl:?}"), "api/token", aemm, fake);
        }
    }
}

#[tokio::test]
async fn metadata_needs_a_valid_token() {
    // [IMDSv2]: "When token usage is set to required, requests without a valid token or with an
    // expired token receive a 401 - Unauthorized HTTP error code." (AEMM does so only on the paths
    // it serves: see aemm_deviates_by_answering_404_without_a_token.)
    let pair = Pair::start(spot_worker(), Scenario::None).await;
    let (aemm_token, fake_token) = pair.tokens().await;
    for path in [
        "meta-data/instance-id",
        "meta-data/local-hostname",
        "meta-data/autoscaling/target-lifecycle-state",
    ] {
        let aemm = get(&pair.http, &pair.aemm.endpoint(), path, None).await;
        let fake = get(&pair.http, &pair.fake.endpoint(), path, None).await;
        assert_eq!(aemm.status, 401, "{path}: {aemm:?}");
        assert_same("no token", path, &aemm, &fake);
        let aemm = get(&pair.http, &pair.aemm.endpoint(), path, Some("not-a-token")).await;
        let fake = get(&pair.http, &pair.fake.endpoint(), path, Some("not-a-token")).await;
        assert_eq!(aemm.status, 401, "{path}: {aemm:?}");
        assert_same("bogus token", path, &aemm, &fake);
        // "The token is an instance-specific key. The token is not valid on other EC2 instances."
        let aemm = get(&pair.http, &pair.aemm.endpoint(), path, Some(&fake_token)).await;
        let fake = get(&pair.http, &pair.fake.endpoint(), path, Some(&aemm_token)).await;
        assert_eq!(aemm.status, 401, "{path}: {aemm:?}");
        assert_same("another instance's token", path, &aemm, &fake);
    }
}

#[tokio::test]
async fn a_token_expires_after_its_ttl() {
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    let path = "meta-data/instance-id";
    for (who, base) in pair.bases() {
        let answer = put_token(&pair.http, &base, Some("1")).await;
        assert_eq!(answer.status, 200, "{who}");
        let token = answer.body;
        let issued = Instant::now();
        assert_eq!(
            get(&pair.http, &base, path, Some(&token)).await.status,
            200,
            "{who}: a fresh token works"
        );
        let refused = eventually(
            &format!("{who} to refuse a 1 s token"),
            Duration::from_secs(5),
            || {
                let (http, base, token) = (&pair.http, &base, &token);
                async move {
                    let answer = get(http, base, path, Some(token)).await;
                    (answer.status == 401).then_some(answer)
                }
            },
        )
        .await;
        let after = issued.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "{who}: refused after {after:?}"
        );
        assert_eq!(refused.status, 401);
    }
}

// ---------------------------------------------------------------- notices

#[tokio::test]
async fn absent_notices_are_404_and_the_lifecycle_state_is_in_service() {
    // [Spot]: "If Amazon EC2 is not preparing to stop or terminate the instance … instance-action
    // is not present and you receive an HTTP 404 error". [Rebalance]: "If the signal has not been
    // emitted for the instance, events/recommendations/rebalance is not present and you receive an
    // HTTP 404 error". [Lifecycle]: InService is the steady state of a running group member.
    for instance in [spot_worker(), asg_worker(), on_demand()] {
        let id = instance.instance_id.clone();
        let pair = Pair::start(instance.clone(), Scenario::None).await;
        for path in [
            "meta-data/spot/instance-action",
            "meta-data/spot/termination-time",
            "meta-data/events/recommendations/rebalance",
        ] {
            let (aemm, fake) = pair.get(path).await;
            assert_eq!(aemm.status, 404, "{id}: {path}");
            assert_same(&id, path, &aemm, &fake);
        }
        let (aemm, fake) = pair
            .get("meta-data/autoscaling/target-lifecycle-state")
            .await;
        let expected = if instance.asg_name.is_some() {
            200
        } else {
            404
        };
        assert_eq!(aemm.status, expected, "{id}: {aemm:?}");
        if expected == 200 {
            assert_eq!(aemm.body, "InService");
        }
        assert_same(&id, "target-lifecycle-state", &aemm, &fake);
    }
}

#[tokio::test]
async fn spot_interruption_notices_match_for_every_action() {
    let time = at(120);
    for action in SpotAction::ALL {
        let pair = Pair::start(spot_worker(), Scenario::spot(action, time)).await;
        let context = format!("spot {}", action.as_str());
        pair.assert_agent_paths_match(&context).await;
        let (aemm, _) = pair.get("meta-data/spot/instance-action").await;
        let notice: Value = serde_json::from_str(&aemm.body).expect("JSON");
        assert_eq!(notice["action"], action.as_str());
        assert_eq!(
            notice["time"],
            time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        );
        // The ASG still has it InService: a spot interruption is not a scale-in.
        let (aemm, _) = pair
            .get("meta-data/autoscaling/target-lifecycle-state")
            .await;
        assert_eq!(aemm.body, "InService");
        if action == SpotAction::Terminate {
            let (aemm, fake) = pair.get("meta-data/spot/termination-time").await;
            assert_eq!(aemm.status, 200);
            assert_same(&context, "spot/termination-time", &aemm, &fake);
        }
    }
}

#[tokio::test]
async fn rebalance_recommendations_match() {
    let notice_time = at(-5);
    let pair = Pair::start(spot_worker(), Scenario::rebalance(notice_time)).await;
    pair.assert_agent_paths_match("rebalance").await;
    let (aemm, _) = pair.get("meta-data/events/recommendations/rebalance").await;
    // [Rebalance]: {"noticeTime": "2020-10-27T08:22:00Z"}
    let notice: Value = serde_json::from_str(&aemm.body).expect("JSON");
    assert_eq!(
        notice,
        serde_json::json!({"noticeTime": notice_time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()})
    );
    // A rebalance recommendation is not an interruption notice.
    let (aemm, _) = pair.get("meta-data/spot/instance-action").await;
    assert_eq!(aemm.status, 404);
}

#[tokio::test]
async fn asg_termination_turns_the_target_lifecycle_state_to_terminated() {
    for instance in [asg_worker(), spot_worker()] {
        let id = instance.instance_id.clone();
        let pair = Pair::start(instance, Scenario::asg_termination()).await;
        pair.assert_agent_paths_match(&id).await;
        let (aemm, _) = pair
            .get("meta-data/autoscaling/target-lifecycle-state")
            .await;
        assert_eq!(aemm.body, "Terminated", "{id}");
    }
}

#[tokio::test]
async fn aemm_refuses_an_asg_termination_outside_an_asg() {
    let error = Aemm::start(on_demand(), Scenario::asg_termination())
        .await
        .expect_err("no ASG, no target lifecycle state");
    assert!(
        error.to_string().contains("no Auto Scaling group"),
        "{error}"
    );
}

#[tokio::test]
async fn delayed_and_triggered_notices_appear_on_time() {
    // AEMM's delay (relative to its start) and trigger time (absolute): 404 / InService before,
    // the notice after. Our fake shows a notice from the moment a test injects it; both must agree
    // before and after.
    let time = at(120);
    let started = Instant::now();
    let spot = Pair::start(
        spot_worker(),
        Scenario::SpotInterruption {
            action: SpotAction::Terminate,
            time: Some(time),
            onset: Onset::After(Duration::from_secs(2)),
        },
    )
    .await;
    let trigger = at(3);
    let asg = Pair::start(
        asg_worker(),
        Scenario::AsgTermination {
            onset: Onset::At(trigger),
        },
    )
    .await;
    // Before: the fakes are cleared again to show the same nothing.
    spot.fake.clear_spot_instance_action();
    asg.fake.set_target_lifecycle_state(None);
    if started.elapsed() < Duration::from_millis(1500) {
        spot.assert_agent_paths_match("spot, before the delay")
            .await;
    }
    if Timestamp::now() + SignedDuration::from_millis(500) < trigger {
        asg.assert_agent_paths_match("ASG, before the trigger")
            .await;
    }
    // After: AEMM shows them by itself; the fakes get the same notices.
    let token = token(&spot.http, &spot.aemm.endpoint()).await;
    eventually("AEMM's delayed spot notice", Duration::from_secs(6), || {
        let (http, base, token) = (&spot.http, spot.aemm.endpoint(), &token);
        async move {
            let answer = get(http, &base, "meta-data/spot/instance-action", Some(token)).await;
            (answer.status == 200).then_some(())
        }
    })
    .await;
    // AEMM counts the delay in whole Unix seconds from its start: a 2 s delay shows after 1-2 s.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "shown before its delay"
    );
    spot.fake.inject_spot_instance_action("terminate", time);
    spot.assert_agent_paths_match("spot, after the delay").await;

    let token = self::token(&asg.http, &asg.aemm.endpoint()).await;
    eventually(
        "AEMM's triggered termination",
        Duration::from_secs(6),
        || {
            let (http, base, token) = (&asg.http, asg.aemm.endpoint(), &token);
            async move {
                let answer = get(
                    http,
                    &base,
                    "meta-data/autoscaling/target-lifecycle-state",
                    Some(token),
                )
                .await;
                (answer.body == "Terminated").then_some(())
            }
        },
    )
    .await;
    assert!(
        Timestamp::now() >= trigger,
        "terminated before its trigger time"
    );
    asg.fake.set_target_lifecycle_state(Some("Terminated"));
    asg.assert_agent_paths_match("ASG, after the trigger").await;
}

#[tokio::test]
async fn aemm_default_times_have_the_documented_format() {
    // Without a time, AEMM makes the spot action time up per request (now + 2 minutes) and the
    // rebalance notice time too (now): compared by format and by value within a few seconds,
    // since our fake keeps the time a test injects.
    let scenario = Scenario::SpotInterruption {
        action: SpotAction::Stop,
        time: None,
        onset: Onset::Now,
    };
    let pair = Pair::start(spot_worker(), scenario).await;
    let (aemm, fake) = pair.get("meta-data/spot/instance-action").await;
    for (who, answer) in [("AEMM", &aemm), ("fake", &fake)] {
        let notice: Value = serde_json::from_str(&answer.body).expect("JSON");
        let time = notice["time"].as_str().expect("time");
        assert!(is_imds_time(time), "{who}: {time}");
        let ahead =
            time.parse::<Timestamp>().expect("time").as_second() - Timestamp::now().as_second();
        assert!((115..=125).contains(&ahead), "{who}: {ahead} s ahead");
        assert_eq!(notice["action"], "stop");
    }
    let scenario = Scenario::Rebalance {
        notice_time: None,
        onset: Onset::Now,
    };
    let pair = Pair::start(spot_worker(), scenario).await;
    let (aemm, fake) = pair.get("meta-data/events/recommendations/rebalance").await;
    for (who, answer) in [("AEMM", &aemm), ("fake", &fake)] {
        let notice: Value = serde_json::from_str(&answer.body).expect("JSON");
        let time = notice["noticeTime"].as_str().expect("noticeTime");
        assert!(is_imds_time(time), "{who}: {time}");
        let age =
            Timestamp::now().as_second() - time.parse::<Timestamp>().expect("time").as_second();
        assert!((0..=5).contains(&age), "{who}: {age} s old");
    }
}

// ---------------------------------------------------------------- where AEMM deviates from AWS

#[tokio::test]
async fn aemm_deviates_by_answering_404_without_a_token() {
    // [IMDSv2]: "When token usage is set to required, requests without a valid token or with an
    // expired token receive a 401 - Unauthorized HTTP error code." AEMM v1.13.0 checks the token
    // only on the paths its command has a handler for; any other path falls to its catch-all
    // handler and answers 404 without a token: the lifecycle state and the ASG tag of an instance
    // outside an ASG (the `spot` command), the spot notices of an on-demand ASG member (the
    // `asglifecycle` command). Our fake answers 401, as AWS does. The agent always sends a token,
    // so nothing it does depends on this.
    for (instance, paths) in [
        (
            on_demand(),
            [
                "meta-data/autoscaling/target-lifecycle-state",
                "meta-data/tags/instance/aws:autoscaling:groupName",
            ],
        ),
        (
            asg_worker(),
            [
                "meta-data/spot/instance-action",
                "meta-data/events/recommendations/rebalance",
            ],
        ),
    ] {
        let pair = Pair::start(instance, Scenario::None).await;
        let command = pair.aemm.subcommand();
        for path in paths {
            let aemm = get(&pair.http, &pair.aemm.endpoint(), path, None).await;
            let fake = get(&pair.http, &pair.fake.endpoint(), path, None).await;
            assert_eq!(aemm.status, 404, "AEMM {command:?}, {path}: {aemm:?}");
            assert_eq!(fake.status, 401, "fake, {path}: {fake:?}");
        }
    }
}

#[tokio::test]
async fn aemm_deviates_by_issuing_tokens_through_a_proxy() {
    // [IMDSv2]: "PUT requests are rejected if they contain an X-Forwarded-For header." AEMM
    // v1.13.0 issues the token anyway; our fake refuses it with 403 ([Retrieve]: "403 - Forbidden –
    // The request is not allowed"). The agent never uses a proxy for IMDS.
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    let headers = [(TTL_HEADER, "60"), ("x-forwarded-for", "203.0.113.7")];
    let aemm = request(
        &pair.http,
        &pair.aemm.endpoint(),
        Method::PUT,
        "api/token",
        &headers,
    )
    .await;
    let fake = request(
        &pair.http,
        &pair.fake.endpoint(),
        Method::PUT,
        "api/token",
        &headers,
    )
    .await;
    assert_eq!(aemm.status, 200, "AEMM: {aemm:?}");
    assert!(!aemm.body.is_empty());
    assert_eq!(fake.status, 403, "fake: {fake:?}");
}

#[tokio::test]
async fn aemm_deviates_by_serving_notices_as_application_json() {
    // [Retrieve]: "All instance metadata is returned as text (HTTP content type text/plain)."
    // AEMM v1.13.0 serves the spot and rebalance notices as application/json (pretty-printed with
    // tabs; the same JSON). Our fake says text/plain. The agent ignores the content type.
    let time = at(120);
    for scenario in [
        Scenario::spot(SpotAction::Terminate, time),
        Scenario::rebalance(time),
    ] {
        let pair = Pair::start(spot_worker(), scenario).await;
        let path = match pair.aemm.scenario() {
            Scenario::Rebalance { .. } => "meta-data/events/recommendations/rebalance",
            _ => "meta-data/spot/instance-action",
        };
        let (aemm, fake) = pair.get(path).await;
        assert_eq!(aemm.status, 200);
        assert_eq!(aemm.content_type, "application/json", "AEMM, {path}");
        assert_eq!(fake.content_type, "text/plain", "fake, {path}");
        assert_same("content type", path, &aemm, &fake);
    }
    // Plain values are text/plain on both.
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    let (aemm, fake) = pair.get("meta-data/instance-id").await;
    assert_eq!(aemm.content_type, "text/plain");
    assert_eq!(fake.content_type, "text/plain");
}

#[tokio::test]
async fn aemm_deviates_by_showing_a_termination_time_for_stop_and_hibernate() {
    // [Spot], termination-time: "If your Spot Instance is marked for termination by the Spot
    // service, the termination-time item is present in your instance metadata. Otherwise, it is
    // not present." AEMM v1.13.0 serves it for every action; our fake only for terminate. The
    // agent reads instance-action, not termination-time.
    let time = at(120);
    for action in [SpotAction::Stop, SpotAction::Hibernate] {
        let pair = Pair::start(spot_worker(), Scenario::spot(action, time)).await;
        let (aemm, fake) = pair.get("meta-data/spot/termination-time").await;
        assert_eq!(aemm.status, 200, "AEMM, {}: {aemm:?}", action.as_str());
        assert!(is_imds_time(&aemm.body), "{aemm:?}");
        assert_eq!(fake.status, 404, "fake, {}: {fake:?}", action.as_str());
    }
}

#[tokio::test]
async fn aemm_answers_other_methods_on_the_token_path_with_an_empty_200() {
    // [IMDSv2] starts a session with a PUT and allows GET and HEAD for metadata; it names no
    // status for a GET of /latest/api/token. AEMM v1.13.0 answers it 200 with an empty body and no
    // TTL (no token); our fake answers 405 Method Not Allowed. Pinned so a change shows up.
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    let headers = [(TTL_HEADER, "60")];
    let aemm = request(
        &pair.http,
        &pair.aemm.endpoint(),
        Method::GET,
        "api/token",
        &headers,
    )
    .await;
    let fake = request(
        &pair.http,
        &pair.fake.endpoint(),
        Method::GET,
        "api/token",
        &headers,
    )
    .await;
    assert_eq!(
        (aemm.status, aemm.body.as_str(), aemm.ttl.as_deref()),
        (200, "", None)
    );
    assert_eq!(fake.status, 405, "fake: {fake:?}");
}

#[tokio::test]
async fn aemm_deviates_by_listing_every_path_that_mentions_a_category() {
    // [Retrieve]: "A request for a general metadata resource (the URI ends with a /) returns a list
    // of available resources". AEMM v1.13.0 builds listings by substring: `autoscaling/` also lists
    // `tags/`, because the ASG tag's path (tags/instance/aws:autoscaling:groupName) contains
    // "autoscaling". Our fake lists only target-lifecycle-state. The agent reads no listing.
    let pair = Pair::start(asg_worker(), Scenario::None).await;
    let (aemm, fake) = pair.get("meta-data/autoscaling/").await;
    assert_eq!(aemm.body, "tags/\ntarget-lifecycle-state", "AEMM: {aemm:?}");
    assert_eq!(fake.body, "target-lifecycle-state", "fake: {fake:?}");
    // The tag listing itself agrees.
    let (aemm, fake) = pair.get("meta-data/tags/instance").await;
    assert_same("tags", "meta-data/tags/instance", &aemm, &fake);
}
