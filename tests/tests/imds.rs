//! The fake IMDSv2: token flow, metadata paths, the lifecycle state read from the AWS model,
//! injected spot and rebalance notices, outages, the fleet directory, and the official
//! `aws_config::imds::Client` against it.

use std::future::Future;
use std::time::Duration;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use jiff::Timestamp;
use reqwest::StatusCode;
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::{
    Availability, FakeImds, ImdsFleet, ImdsInstance, ImdsOptions, TOKEN_HEADER, TTL_HEADER,
};
use smartscale_testworld::process::poll_until;

async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("test exceeded its 90 s deadline");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

fn spot_instance() -> ImdsInstance {
    ImdsInstance {
        instance_id: "i-0123456789abcdef0".to_string(),
        region: "eu-west-1".to_string(),
        availability_zone: "eu-west-1b".to_string(),
        instance_type: "m5.large".to_string(),
        life_cycle: "spot".to_string(),
        asg_name: Some("workers".to_string()),
        ..ImdsInstance::example("i-0123456789abcdef0")
    }
}

async fn start(instance: ImdsInstance) -> FakeImds {
    FakeImds::start(ImdsOptions::new(instance))
        .await
        .expect("fake IMDS")
}

async fn put_token(imds: &FakeImds, ttl: Option<&str>) -> reqwest::Response {
    let mut request = http().put(format!("{}latest/api/token", imds.endpoint()));
    if let Some(ttl) = ttl {
        request = request.header(TTL_HEADER, ttl);
    }
    request.send().await.expect("token PUT")
}

async fn token(imds: &FakeImds) -> String {
    let response = put_token(imds, Some("300")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("token")
}

/// GET a path below `/latest/` with `token`: (status, body).
async fn get(imds: &FakeImds, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = http().get(format!("{}latest/{path}", imds.endpoint()));
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token);
    }
    let response = request.send().await.expect("IMDS GET");
    let status = response.status();
    (status, response.text().await.expect("IMDS body"))
}

#[tokio::test]
async fn token_flow_as_imdsv2_requires() {
    bounded(async {
        let imds = start(spot_instance()).await;

        // No token: 401, as with HttpTokens=required.
        assert_eq!(
            get(&imds, "meta-data/instance-id", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some("made-up")).await.0,
            StatusCode::UNAUTHORIZED
        );

        // The TTL header is required and bounded to 1..=21600.
        for bad in [None, Some("0"), Some("21601"), Some("-5"), Some("ten")] {
            assert_eq!(
                put_token(&imds, bad).await.status(),
                StatusCode::BAD_REQUEST,
                "TTL {bad:?}"
            );
        }
        let response = put_token(&imds, Some("21600")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(TTL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("21600"),
            "the TTL is echoed"
        );
        let long_lived = response.text().await.expect("token");
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&long_lived)).await,
            (StatusCode::OK, "i-0123456789abcdef0".to_string())
        );

        // Tokens expire with their TTL (the IMDS clock is advanced instead of waiting).
        let short = put_token(&imds, Some("60"))
            .await
            .text()
            .await
            .expect("token");
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&short)).await.0,
            StatusCode::OK
        );
        imds.advance_clock(Duration::from_secs(61));
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&short)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&long_lived))
                .await
                .0,
            StatusCode::OK
        );

        // Other methods and proxied token requests are refused.
        let response = http()
            .get(format!("{}latest/api/token", imds.endpoint()))
            .send()
            .await
            .expect("GET token");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let response = http()
            .put(format!("{}latest/api/token", imds.endpoint()))
            .header(TTL_HEADER, "60")
            .header("X-Forwarded-For", "10.0.0.1")
            .send()
            .await
            .expect("proxied PUT");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            imds.requests()
                .iter()
                .any(|(method, path, status)| method == "PUT"
                    && path == "/latest/api/token"
                    && *status == 403)
        );
    })
    .await;
}

#[tokio::test]
async fn metadata_paths() {
    bounded(async {
        let imds = start(spot_instance()).await;
        let token = token(&imds).await;
        let ok = |body: &str| (StatusCode::OK, body.to_string());
        for (path, expected) in [
            ("meta-data/instance-id", "i-0123456789abcdef0"),
            ("meta-data/instance-type", "m5.large"),
            ("meta-data/instance-life-cycle", "spot"),
            ("meta-data/placement/availability-zone", "eu-west-1b"),
            ("meta-data/placement/region", "eu-west-1"),
            (
                "meta-data/tags/instance/aws:autoscaling:groupName",
                "workers",
            ),
            ("meta-data/autoscaling/target-lifecycle-state", "InService"),
        ] {
            assert_eq!(get(&imds, path, Some(&token)).await, ok(expected), "{path}");
        }
        let (status, listing) = get(&imds, "meta-data/", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let entries: Vec<&str> = listing.lines().collect();
        for entry in [
            "instance-id",
            "instance-type",
            "instance-life-cycle",
            "placement/",
            "autoscaling/",
            "events/",
            "tags/",
        ] {
            assert!(entries.contains(&entry), "{entry} missing from {entries:?}");
        }
        assert!(
            !entries.contains(&"spot/"),
            "no spot/ before an interruption notice"
        );
        assert_eq!(
            get(&imds, "meta-data/placement/", Some(&token)).await,
            ok("availability-zone\nregion")
        );
        let (status, document) =
            get(&imds, "dynamic/instance-identity/document", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let document: serde_json::Value = serde_json::from_str(&document).expect("identity JSON");
        assert_eq!(document["instanceId"], "i-0123456789abcdef0");
        assert_eq!(document["region"], "eu-west-1");
        assert_eq!(
            get(&imds, "meta-data/no-such-thing", Some(&token)).await.0,
            StatusCode::NOT_FOUND
        );

        // An instance outside any group has no autoscaling/ at all.
        let plain = start(ImdsInstance::example("i-00000000000000001")).await;
        let plain_token = self::token(&plain).await;
        assert_eq!(
            get(
                &plain,
                "meta-data/autoscaling/target-lifecycle-state",
                Some(&plain_token)
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&plain, "meta-data/instance-life-cycle", Some(&plain_token)).await,
            ok("on-demand")
        );
    })
    .await;
}

#[tokio::test]
async fn spot_and_rebalance_notices_are_injected() {
    bounded(async {
        let imds = start(spot_instance()).await;
        let token = token(&imds).await;
        for path in [
            "meta-data/spot/instance-action",
            "meta-data/spot/termination-time",
            "meta-data/events/recommendations/rebalance",
        ] {
            assert_eq!(
                get(&imds, path, Some(&token)).await.0,
                StatusCode::NOT_FOUND,
                "{path} before injection"
            );
        }

        let when: Timestamp = "2026-11-28T08:22:00Z".parse().expect("time");
        imds.inject_spot_instance_action("terminate", when);
        let (status, body) = get(&imds, "meta-data/spot/instance-action", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let action: serde_json::Value = serde_json::from_str(&body).expect("instance-action JSON");
        assert_eq!(
            action,
            serde_json::json!({"action": "terminate", "time": "2026-11-28T08:22:00Z"})
        );
        assert_eq!(
            get(&imds, "meta-data/spot/termination-time", Some(&token)).await,
            (StatusCode::OK, "2026-11-28T08:22:00Z".to_string())
        );
        assert!(
            get(&imds, "meta-data/", Some(&token))
                .await
                .1
                .lines()
                .any(|line| line == "spot/")
        );

        let notice: Timestamp = "2026-11-28T08:20:00Z".parse().expect("time");
        imds.inject_rebalance_recommendation(notice);
        let (status, body) = get(
            &imds,
            "meta-data/events/recommendations/rebalance",
            Some(&token),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let rebalance: serde_json::Value = serde_json::from_str(&body).expect("rebalance JSON");
        assert_eq!(
            rebalance,
            serde_json::json!({"noticeTime": "2026-11-28T08:20:00Z"})
        );

        imds.clear_spot_instance_action();
        imds.clear_rebalance_recommendation();
        assert_eq!(
            get(&imds, "meta-data/spot/instance-action", Some(&token))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(
                &imds,
                "meta-data/events/recommendations/rebalance",
                Some(&token)
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn goes_down_and_comes_back() {
    bounded(async {
        let imds = start(spot_instance()).await;
        let token = token(&imds).await;
        let endpoint = imds.endpoint();

        imds.set_availability(Availability::Unavailable)
            .await
            .expect("503 mode");
        assert_eq!(imds.availability(), Availability::Unavailable);
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&token)).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            put_token(&imds, Some("60")).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        imds.set_availability(Availability::Refused)
            .await
            .expect("refused mode");
        assert_eq!(imds.availability(), Availability::Refused);
        let refused = http()
            .get(format!("{endpoint}latest/meta-data/instance-id"))
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect_err("nothing listens");
        assert!(refused.is_connect(), "{refused:?}");

        imds.set_availability(Availability::Up)
            .await
            .expect("back up");
        assert_eq!(imds.endpoint(), endpoint, "same port after the outage");
        assert_eq!(
            get(&imds, "meta-data/instance-id", Some(&token)).await,
            (StatusCode::OK, "i-0123456789abcdef0".to_string())
        );
    })
    .await;
}

#[tokio::test]
async fn official_imds_client_works_against_it() {
    bounded(async {
        let imds = start(spot_instance()).await;
        let client = aws_config::imds::Client::builder()
            .endpoint(imds.endpoint())
            .expect("endpoint")
            .build();
        let id = client
            .get("/latest/meta-data/instance-id")
            .await
            .expect("instance-id");
        assert_eq!(id.as_ref(), "i-0123456789abcdef0");
        let state = client
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .expect("target-lifecycle-state");
        assert_eq!(state.as_ref(), "InService");
        // The client caches its token (default TTL 6 h): one PUT for both GETs.
        let puts = imds
            .requests()
            .iter()
            .filter(|(method, _, _)| method == "PUT")
            .count();
        assert_eq!(puts, 1);
        // A missing document is an error the caller can tell apart (404 → ImdsError::ErrorResponse).
        let missing = client
            .get("/latest/meta-data/spot/instance-action")
            .await
            .expect_err("404");
        assert!(format!("{missing:?}").contains("404"), "{missing:?}");
    })
    .await;
}

/// Run only as a child of `official_client_finds_it_through_the_environment`, which sets the
/// variable: changing a running test process's environment is not safe.
#[tokio::test]
async fn official_client_from_environment_child() {
    if std::env::var_os("SMARTSCALE_IMDS_CHILD").is_none() {
        return;
    }
    let client = aws_config::imds::Client::builder().build();
    let id = client
        .get("/latest/meta-data/instance-id")
        .await
        .expect("instance-id");
    println!("CHILD-INSTANCE-ID={}", id.as_ref());
}

#[tokio::test]
async fn official_client_finds_it_through_the_environment() {
    bounded(async {
        let imds = start(spot_instance()).await;
        let exe = std::env::current_exe().expect("test binary");
        let output = tokio::process::Command::new(exe)
            .args([
                "--exact",
                "official_client_from_environment_child",
                "--nocapture",
            ])
            .env("SMARTSCALE_IMDS_CHILD", "1")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .output()
            .await
            .expect("child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("CHILD-INSTANCE-ID=i-0123456789abcdef0"),
            "{stdout}"
        );
    })
    .await;
}

#[tokio::test]
async fn fleet_follows_the_model() {
    bounded(async {
        let model = AwsModel::start().await.expect("AWS model");
        let region = "us-west-2";
        model
            .client()
            .create_launch_template(region, "lt", "ami-12c6146b", "t3.medium")
            .await
            .expect("launch template");
        let asg = aws_sdk_autoscaling::Client::new(&model.sdk_config(region));
        asg.create_auto_scaling_group()
            .auto_scaling_group_name("fleet")
            .min_size(0)
            .max_size(4)
            .desired_capacity(2)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name("lt")
                    .build(),
            )
            .availability_zones(format!("{region}a"))
            .availability_zones(format!("{region}b"))
            .send()
            .await
            .expect("CreateAutoScalingGroup");
        asg.put_lifecycle_hook()
            .auto_scaling_group_name("fleet")
            .lifecycle_hook_name("drain")
            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
            .heartbeat_timeout(300)
            .send()
            .await
            .expect("PutLifecycleHook");

        let fleet = ImdsFleet::start(model.client().clone(), 0)
            .await
            .expect("fleet");
        let directory: std::collections::BTreeMap<String, String> = poll_until(
            "two IMDS endpoints in the directory",
            Duration::from_secs(10),
            || async {
                let listed: std::collections::BTreeMap<String, String> = http()
                    .get(fleet.directory_url())
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?
                    .json()
                    .await
                    .map_err(|e| smartscale_testworld::Error::Invalid(e.to_string()))?;
                Ok((listed.len() == 2).then_some(listed))
            },
        )
        .await
        .expect("directory");

        let (instance_id, endpoint) = directory.iter().next().expect("one instance");
        let imds = fleet.imds(instance_id).await.expect("the instance's IMDS");
        assert_eq!(&imds.endpoint(), endpoint);
        let instance = model
            .instance(instance_id)
            .await
            .expect("model")
            .expect("known instance");
        let token = token(&imds).await;
        assert_eq!(
            get(&imds, "meta-data/placement/availability-zone", Some(&token))
                .await
                .1,
            instance.availability_zone
        );
        assert_eq!(
            get(
                &imds,
                "meta-data/tags/instance/aws:autoscaling:groupName",
                Some(&token)
            )
            .await
            .1,
            "fleet"
        );
        assert_eq!(
            get(
                &imds,
                "meta-data/autoscaling/target-lifecycle-state",
                Some(&token)
            )
            .await
            .1,
            "InService"
        );

        // The ASG starts terminating it: IMDS says Terminated while the hook holds it.
        asg.terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .expect("TerminateInstanceInAutoScalingGroup");
        assert_eq!(
            model
                .instance(instance_id)
                .await
                .expect("model")
                .expect("known")
                .lifecycle_state,
            "Terminating:Wait"
        );
        assert_eq!(
            get(
                &imds,
                "meta-data/autoscaling/target-lifecycle-state",
                Some(&token)
            )
            .await
            .1,
            "Terminated"
        );

        // Control endpoints on the directory, for people driving `up` from a shell.
        let response = http()
            .post(format!(
                "{}/{instance_id}/spot-instance-action",
                fleet.directory_url()
            ))
            .body(r#"{"action": "terminate", "time": "2026-11-28T08:22:00Z"}"#)
            .send()
            .await
            .expect("inject");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            get(&imds, "meta-data/spot/instance-action", Some(&token))
                .await
                .1,
            r#"{"action":"terminate","time":"2026-11-28T08:22:00Z"}"#
        );
        let response = http()
            .post(format!("{}/i-unknown/rebalance", fleet.directory_url()))
            .send()
            .await
            .expect("inject");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = http()
            .post(format!(
                "{}/{instance_id}/availability",
                fleet.directory_url()
            ))
            .body(r#"{"state": "sideways"}"#)
            .send()
            .await
            .expect("availability");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        fleet.shutdown().await;
    })
    .await;
}
