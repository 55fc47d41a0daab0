//! The agent's IMDSv2 session and its termination sources against amazon-ec2-metadata-mock
//! (AEMM, the AWS-maintained mock): instance facts, spot interruptions (terminate, stop,
//! hibernate), rebalance recommendations and the ASG's target lifecycle state, including
//! notices AEMM shows only after a delay or at a trigger time, through the watcher the `run`
//! daemon uses.
//!
//! The test world's own fake IMDS is used only where AEMM cannot do what a test needs (each test
//! says why): a token that expires or is forgotten, an outage, a lifecycle state that follows the
//! ASG model live. `smartscale-testworld`'s `imds_parity` test proves the two answer the agent's
//! paths the same way.
//!
//! Needs the AEMM binary and, for the ASG model test, the moto venv (`scripts/setup-backends.sh`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use smartscale_agent::imds::Imds;
use smartscale_agent::metrics::Metrics;
use smartscale_agent::sources::{self, Event, Source};
use smartscale_testworld::aemm::{Aemm, Onset, Scenario, SpotAction, local_hostname};
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::{Availability, FakeImds, ImdsInstance, ImdsOptions};
use tokio::sync::mpsc;

const WATCHED: [Source; 3] = [
    Source::TargetLifecycle,
    Source::SpotInterruption,
    Source::Rebalance,
];

/// A spot worker of an Auto Scaling group in eu-west-3.
fn spot_worker(id: &str) -> ImdsInstance {
    let mut instance = ImdsInstance::example(id);
    instance.life_cycle = "spot".into();
    instance.asg_name = Some("workers".into());
    instance.availability_zone = "eu-west-3b".into();
    instance.region = "eu-west-3".into();
    instance
}

async fn aemm(instance: ImdsInstance, scenario: Scenario) -> Aemm {
    Aemm::start(instance, scenario)
        .await
        .unwrap_or_else(|e| panic!("AEMM: {e}"))
}

fn client(endpoint: &str) -> Imds {
    Imds::new(endpoint, Duration::from_secs(60)).expect("client")
}

/// Whole seconds: IMDS times have none smaller.
fn at(seconds_from_now: i64) -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second() + seconds_from_now).expect("time")
}

/// Every source's answer now.
async fn notices(client: &Imds) -> Vec<(Source, Option<Event>)> {
    let mut answers = Vec::new();
    for source in WATCHED {
        let answer = sources::check(source, client)
            .await
            .unwrap_or_else(|e| panic!("{source:?}: {e}"));
        answers.push((source, answer));
    }
    answers
}

/// The sources that report a notice now.
async fn firing(client: &Imds) -> Vec<Source> {
    notices(client)
        .await
        .into_iter()
        .filter_map(|(source, event)| event.map(|_| source))
        .collect()
}

/// The `run` daemon's watcher on `endpoint`; the first event it sends, within `timeout`.
async fn first_watched_event(endpoint: &str, timeout: Duration) -> Event {
    let imds = Arc::new(client(endpoint));
    let (events, mut received) = mpsc::channel(4);
    let (_rearm, rearmed) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(sources::watch(
        imds,
        WATCHED.to_vec(),
        Duration::from_millis(200),
        events,
        rearmed,
        Arc::new(Metrics::new()),
    ));
    let event = tokio::time::timeout(timeout, received.recv())
        .await
        .unwrap_or_else(|_| panic!("no notice within {timeout:?}"))
        .expect("the watcher sends before it ends");
    watcher.abort();
    event
}

// ---------------------------------------------------------------- against AEMM

#[tokio::test]
async fn instance_facts_from_aemm() {
    let instance = spot_worker("i-0facts");
    let imds = aemm(instance.clone(), Scenario::None).await;
    let client = client(&imds.endpoint());
    let info = client.instance().await.expect("instance");
    assert_eq!(info.instance_id, "i-0facts");
    assert_eq!(info.availability_zone, "eu-west-3b");
    assert_eq!(info.region, "eu-west-3");
    assert_eq!(info.instance_type, "t3.medium");
    assert_eq!(info.capacity_type, "spot");
    assert_eq!(info.asg_name.as_deref(), Some("workers"));
    assert_eq!(info.provider_id(), "aws:///eu-west-3b/i-0facts");
    assert_eq!(info.hostname, local_hostname(&instance));
    assert!(
        info.hostname.ends_with(".eu-west-3.compute.internal"),
        "{}",
        info.hostname
    );
    assert!(firing(&client).await.is_empty(), "no notice yet");

    // An on-demand instance outside any ASG: no tag, no lifecycle state, no notices.
    let imds = aemm(ImdsInstance::example("i-0standalone"), Scenario::None).await;
    let client = self::client(&imds.endpoint());
    let info = client.instance().await.expect("instance");
    assert_eq!(info.capacity_type, "on-demand");
    assert_eq!(info.asg_name, None);
    assert!(
        info.hostname.ends_with(".ec2.internal"),
        "{}",
        info.hostname
    );
    assert!(firing(&client).await.is_empty());
}

#[tokio::test]
async fn spot_interruptions_from_aemm() {
    let time = at(120);
    for action in SpotAction::ALL {
        let imds = aemm(spot_worker("i-0spot"), Scenario::spot(action, time)).await;
        let client = client(&imds.endpoint());
        let answers = notices(&client).await;
        let fired: Vec<_> = answers.iter().filter(|(_, e)| e.is_some()).collect();
        assert_eq!(fired.len(), 1, "{action:?}: {answers:?}");
        let event = fired[0].1.clone().expect("event");
        assert_eq!(event.source, Source::SpotInterruption);
        assert_eq!(event.ends_at, Some(time), "{action:?}");
        let when = time.strftime("%Y-%m-%dT%H:%M:%SZ");
        assert_eq!(
            event.detail,
            format!("spot instance-action {} at {when}", action.as_str())
        );
    }
}

#[tokio::test]
async fn a_rebalance_recommendation_from_aemm() {
    let notice_time = at(-3);
    let imds = aemm(
        spot_worker("i-0rebalance"),
        Scenario::rebalance(notice_time),
    )
    .await;
    let client = client(&imds.endpoint());
    assert_eq!(firing(&client).await, vec![Source::Rebalance]);
    let event = sources::check(Source::Rebalance, &client)
        .await
        .expect("answer")
        .expect("notice");
    let when = notice_time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert!(event.detail.contains(&when), "{}", event.detail);
    assert_eq!(event.ends_at, None, "a recommendation sets no deadline");
}

#[tokio::test]
async fn an_asg_termination_from_aemm_reaches_the_watcher_after_its_delay() {
    let started = Instant::now();
    let imds = aemm(
        spot_worker("i-0scalein"),
        Scenario::AsgTermination {
            onset: Onset::After(Duration::from_secs(2)),
        },
    )
    .await;
    let client = client(&imds.endpoint());
    if started.elapsed() < Duration::from_millis(1500) {
        assert!(
            firing(&client).await.is_empty(),
            "InService before the delay"
        );
    }
    let event = first_watched_event(&imds.endpoint(), Duration::from_secs(10)).await;
    // AEMM counts the delay in whole Unix seconds from its start: a 2 s delay shows after 1-2 s.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "before its delay"
    );
    assert_eq!(event.source, Source::TargetLifecycle);
    assert_eq!(event.detail, "target-lifecycle-state Terminated");
    assert!(event.source.holds_terminate_hook());
}

#[tokio::test]
async fn a_spot_interruption_from_aemm_reaches_the_watcher_at_its_trigger_time() {
    let trigger = at(2);
    let time = at(122);
    let imds = aemm(
        spot_worker("i-0trigger"),
        Scenario::SpotInterruption {
            action: SpotAction::Terminate,
            time: Some(time),
            onset: Onset::At(trigger),
        },
    )
    .await;
    let event = first_watched_event(&imds.endpoint(), Duration::from_secs(10)).await;
    assert!(Timestamp::now() >= trigger, "shown before its trigger time");
    assert_eq!(event.source, Source::SpotInterruption);
    assert_eq!(event.ends_at, Some(time));
}

// ---------------------------------------------------------------- against the fake, and why

async fn fake(instance: ImdsInstance) -> FakeImds {
    FakeImds::start(ImdsOptions::new(instance))
        .await
        .expect("fake IMDS")
}

fn puts_and_401s(imds: &FakeImds) -> (usize, usize) {
    let requests = imds.requests();
    (
        requests.iter().filter(|(m, _, _)| m == "PUT").count(),
        requests.iter().filter(|(_, _, s)| *s == 401).count(),
    )
}

/// FakeImds, not AEMM: the test counts the session's token PUTs and its 401s, which only the fake
/// records (AEMM writes requests to its log as free text, nothing a test can count reliably).
#[tokio::test]
async fn the_token_is_renewed_before_it_expires() {
    let imds = fake(ImdsInstance::example("i-0renew")).await;
    let client = Imds::new(&imds.endpoint(), Duration::from_secs(2)).expect("client");
    assert_eq!(
        client.require("meta-data/instance-id").await.unwrap(),
        "i-0renew"
    );
    assert_eq!(
        client.require("meta-data/instance-id").await.unwrap(),
        "i-0renew"
    );
    assert_eq!(
        puts_and_401s(&imds),
        (1, 0),
        "one token serves both requests"
    );
    // 2 s lifetime: renewed after 1.8 s, before IMDS would refuse it. (The wait is the subject of
    // the test: the token's real lifetime.)
    tokio::time::sleep(Duration::from_millis(1900)).await;
    client.require("meta-data/instance-id").await.unwrap();
    assert_eq!(puts_and_401s(&imds), (2, 0), "{:?}", imds.requests());
}

/// FakeImds, not AEMM: AEMM's clock is the wall clock, so a six-hour token cannot be made to
/// expire (nor can AEMM be told to forget one) without waiting six hours.
#[tokio::test]
async fn a_token_imds_no_longer_knows_is_replaced() {
    let imds = fake(ImdsInstance::example("i-0expired")).await;
    let client = Imds::new(&imds.endpoint(), Duration::from_secs(21_600)).expect("client");
    client.require("meta-data/instance-id").await.unwrap();
    // The IMDS clock jumps past the token's lifetime: the next GET is refused once, then retried.
    imds.advance_clock(Duration::from_secs(7 * 3600));
    assert_eq!(
        client.require("meta-data/instance-id").await.unwrap(),
        "i-0expired"
    );
    assert_eq!(puts_and_401s(&imds), (2, 1), "{:?}", imds.requests());
}

/// FakeImds, not AEMM: AEMM cannot answer 503 or stop listening and come back on the same port
/// (a restarted AEMM would need the port again, and another process may take it meanwhile).
#[tokio::test]
async fn an_outage_is_an_error_until_imds_answers_again() {
    let imds = fake(ImdsInstance::example("i-0outage")).await;
    let client = client(&imds.endpoint());
    client.require("meta-data/instance-id").await.unwrap();
    for outage in [Availability::Unavailable, Availability::Refused] {
        imds.set_availability(outage).await.expect("outage");
        let error = sources::check(Source::SpotInterruption, &client)
            .await
            .expect_err("no answer is not 'no notice'");
        assert!(
            error.to_string().contains("spot/instance-action"),
            "{error}"
        );
        imds.set_availability(Availability::Up).await.expect("back");
        assert_eq!(
            sources::check(Source::SpotInterruption, &client)
                .await
                .expect("answers again"),
            None,
            "{outage:?}"
        );
    }
}

/// FakeImds, not AEMM: AEMM's target lifecycle state is a timer fixed when it starts; only the
/// fake reads it from the ASG model, so it turns `Terminated` when the group really terminates
/// the instance (TerminateInstanceInAutoScalingGroup, held in Terminating:Wait by the hook).
#[tokio::test]
async fn the_lifecycle_state_follows_the_asg_model() {
    support::bounded(Duration::from_secs(90), async {
        let model = AwsModel::start().await.expect("AWS model (moto)");
        let id = support::create_group(&model, support::GroupSpec::default()).await;
        let imds = FakeImds::for_model_instance(model.client(), &id)
            .await
            .expect("fake IMDS");
        let client = client(&imds.endpoint());
        assert!(firing(&client).await.is_empty(), "InService");
        support::asg_client(&model)
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .expect("TerminateInstanceInAutoScalingGroup");
        support::wait_lifecycle(&model, &id, &["Terminating:Wait"], Duration::from_secs(15)).await;
        let event = support::eventually(
            "target-lifecycle-state Terminated",
            Duration::from_secs(5),
            || {
                let client = &client;
                async move {
                    sources::check(Source::TargetLifecycle, client)
                        .await
                        .ok()
                        .flatten()
                }
            },
        )
        .await;
        assert_eq!(event.detail, "target-lifecycle-state Terminated");
        model.shutdown().await;
    })
    .await;
}
