//! The agent's IMDSv2 session against the test world's fake IMDS: token renewed before it
//! expires, a new one taken when IMDS forgets it, instance facts, and the sources' notices.

use std::time::Duration;

use smartscale_agent::imds::Imds;
use smartscale_agent::sources::{self, Source};
use smartscale_testworld::imds::{FakeImds, ImdsInstance, ImdsOptions};

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
    // 2 s lifetime: renewed after 1.8 s, before IMDS would refuse it.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    client.require("meta-data/instance-id").await.unwrap();
    assert_eq!(puts_and_401s(&imds), (2, 0), "{:?}", imds.requests());
}

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

#[tokio::test]
async fn instance_facts_and_notices() {
    let mut instance = ImdsInstance::example("i-0facts");
    instance.life_cycle = "spot".into();
    instance.asg_name = Some("workers".into());
    instance.availability_zone = "eu-west-3b".into();
    instance.region = "eu-west-3".into();
    let imds = fake(instance).await;
    let client = Imds::new(&imds.endpoint(), Duration::from_secs(60)).expect("client");
    let info = client.instance().await.expect("instance");
    assert_eq!(info.instance_id, "i-0facts");
    assert_eq!(info.capacity_type, "spot");
    assert_eq!(info.asg_name.as_deref(), Some("workers"));
    assert_eq!(info.region, "eu-west-3");
    assert_eq!(info.provider_id(), "aws:///eu-west-3b/i-0facts");
    assert!(
        info.hostname.ends_with(".eu-west-3.compute.internal"),
        "{}",
        info.hostname
    );

    for source in [
        Source::TargetLifecycle,
        Source::SpotInterruption,
        Source::Rebalance,
    ] {
        assert_eq!(
            sources::check(source, &client).await.unwrap(),
            None,
            "{source:?}"
        );
    }
    imds.set_target_lifecycle_state(Some("Terminated"));
    let time = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
    imds.inject_spot_instance_action("terminate", time);
    imds.inject_rebalance_recommendation(jiff::Timestamp::now());
    let lifecycle = sources::check(Source::TargetLifecycle, &client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lifecycle.detail, "target-lifecycle-state Terminated");
    let spot = sources::check(Source::SpotInterruption, &client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(spot.ends_at.map(|t| t.as_second()), Some(time.as_second()));
    assert!(
        sources::check(Source::Rebalance, &client)
            .await
            .unwrap()
            .is_some()
    );
}
