//! Issue 2's AWS acceptance: the Rust `aws-sdk-autoscaling` client against the AWS model, with
//! both lifecycle hooks, heartbeats, timeouts on an advanced clock, the fake IMDS following the
//! model, and AWS's ValidationErrors. Each test starts its own model (and uses its own region).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::{FakeImds, TOKEN_HEADER, TTL_HEADER};
use smartscale_testworld::process::poll_until;

const GROUP: &str = "workers";
const LAUNCH_HOOK: &str = "launch-hook";
const TERMINATE_HOOK: &str = "terminate-hook";
/// The hooks' HeartbeatTimeout: 300 s of model time, passed in milliseconds by advancing the clock.
const HEARTBEAT_TIMEOUT: i32 = 300;
const WAIT: Duration = Duration::from_secs(10);

/// Run a test body with a deadline, so a hung expectation fails instead of hanging CI.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test exceeded its 120 s deadline");
}

/// A group of `desired` InService instances over two AZs, then both hooks (so the first
/// instances are not held by them): launch → ABANDON by default, terminate → CONTINUE.
async fn group_with_hooks(model: &AwsModel, region: &str, desired: i32, max: i32) -> Client {
    let asg = Client::new(&model.sdk_config(region));
    model
        .client()
        .create_launch_template(region, "workers-lt", "ami-12c6146b", "t3.medium")
        .await
        .expect("CreateLaunchTemplate");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .min_size(1)
        .max_size(max)
        .desired_capacity(desired)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name("workers-lt")
                .build(),
        )
        .availability_zones(format!("{region}a"))
        .availability_zones(format!("{region}b"))
        .send()
        .await
        .expect("CreateAutoScalingGroup");
    wait_group(&asg, |states| {
        states.len() == desired as usize && states.iter().all(|(_, s)| s == "InService")
    })
    .await;
    for (name, transition, default) in [
        (LAUNCH_HOOK, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"),
        (
            TERMINATE_HOOK,
            "autoscaling:EC2_INSTANCE_TERMINATING",
            "CONTINUE",
        ),
    ] {
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(name)
            .lifecycle_transition(transition)
            .heartbeat_timeout(HEARTBEAT_TIMEOUT)
            .default_result(default)
            .send()
            .await
            .expect("PutLifecycleHook");
    }
    asg
}

/// The group's instances as (id, lifecycle state), from DescribeAutoScalingGroups.
async fn group_states(asg: &Client) -> Vec<(String, String)> {
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    let group = groups
        .auto_scaling_groups()
        .first()
        .expect("the group exists");
    group
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_group(
    asg: &Client,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    poll_until(
        "the group's instances to reach the expected states",
        WAIT,
        || async {
            let states = group_states(asg).await;
            Ok(done(&states).then_some(states))
        },
    )
    .await
    .expect("group states")
}

async fn desired_capacity(asg: &Client) -> i32 {
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    groups.auto_scaling_groups()[0]
        .desired_capacity()
        .expect("desired capacity")
}

/// One instance's lifecycle state from DescribeAutoScalingInstances (`None`: not in a group).
async fn instance_state(asg: &Client, instance_id: &str) -> Option<String> {
    let answer = asg
        .describe_auto_scaling_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .expect("DescribeAutoScalingInstances");
    answer
        .auto_scaling_instances()
        .first()
        .and_then(|i| i.lifecycle_state())
        .map(str::to_string)
}

async fn wait_instance_state(asg: &Client, instance_id: &str, expected: &str) {
    poll_until(&format!("{instance_id} to be {expected}"), WAIT, || async {
        Ok((instance_state(asg, instance_id).await.as_deref() == Some(expected)).then_some(()))
    })
    .await
    .expect("instance state");
}

async fn wait_ec2_state(model: &AwsModel, region: &str, instance_id: &str, expected: &str) {
    poll_until(
        &format!("EC2 to report {instance_id} {expected}"),
        WAIT,
        || async {
            let state = model
                .client()
                .ec2_instance_state(region, instance_id)
                .await?;
            Ok((state == expected).then_some(()))
        },
    )
    .await
    .expect("EC2 state");
}

/// `autoscaling/target-lifecycle-state` through the IMDSv2 token flow, with plain HTTP.
async fn imds_target_state(imds: &FakeImds) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let base = imds.endpoint();
    let token = http
        .put(format!("{base}latest/api/token"))
        .header(TTL_HEADER, "60")
        .send()
        .await
        .expect("token PUT")
        .text()
        .await
        .expect("token body");
    let response = http
        .get(format!(
            "{base}latest/meta-data/autoscaling/target-lifecycle-state"
        ))
        .header(TOKEN_HEADER, token)
        .send()
        .await
        .expect("IMDS GET");
    assert_eq!(response.status(), 200);
    response.text().await.expect("IMDS body")
}

#[tokio::test]
async fn launch_and_terminate_hooks_with_heartbeat() {
    bounded(async {
        let model = AwsModel::start().await.expect("AWS model");
        let region = "eu-west-3";
        let asg = group_with_hooks(&model, region, 2, 5).await;
        let before: BTreeSet<String> = group_states(&asg)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();

        // Scale out 2 → 3: the new instance waits for the launch hook.
        asg.set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(3)
            .honor_cooldown(false)
            .send()
            .await
            .expect("SetDesiredCapacity 3");
        let states = wait_group(&asg, |states| states.len() == 3).await;
        let (new_id, new_state) = states
            .iter()
            .find(|(id, _)| !before.contains(id))
            .cloned()
            .expect("a new instance");
        assert_eq!(new_state, "Pending:Wait");
        assert_eq!(
            instance_state(&asg, &new_id).await.as_deref(),
            Some("Pending:Wait")
        );
        let imds = FakeImds::for_model_instance(model.client(), &new_id)
            .await
            .expect("IMDS for the new instance");
        // During Pending:Wait the target is where the launch is heading.
        assert_eq!(imds_target_state(&imds).await, "InService");

        asg.complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(LAUNCH_HOOK)
            .instance_id(&new_id)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .expect("CompleteLifecycleAction CONTINUE (launch)");
        wait_instance_state(&asg, &new_id, "InService").await;
        assert_eq!(desired_capacity(&asg).await, 3);

        // Scale in that instance: it waits for the terminate hook, still running in EC2, and
        // its IMDS already says Terminated (what the agent watches for).
        let answer = asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&new_id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .expect("TerminateInstanceInAutoScalingGroup");
        assert!(
            answer.activity().is_some(),
            "an activity describes the termination"
        );
        wait_instance_state(&asg, &new_id, "Terminating:Wait").await;
        assert_eq!(desired_capacity(&asg).await, 2);
        assert_eq!(imds_target_state(&imds).await, "Terminated");
        assert_eq!(
            model
                .client()
                .ec2_instance_state(region, &new_id)
                .await
                .expect("EC2"),
            "running"
        );

        // A heartbeat at 200 s restarts the 300 s timeout: at 400 s it is still waiting.
        model.advance_clock(200.0).await.expect("advance 200 s");
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(TERMINATE_HOOK)
            .instance_id(&new_id)
            .send()
            .await
            .expect("RecordLifecycleActionHeartbeat");
        model
            .advance_clock(200.0)
            .await
            .expect("advance 200 s more");
        assert_eq!(
            instance_state(&asg, &new_id).await.as_deref(),
            Some("Terminating:Wait")
        );
        assert_eq!(
            model
                .client()
                .ec2_instance_state(region, &new_id)
                .await
                .expect("EC2"),
            "running"
        );

        asg.complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(TERMINATE_HOOK)
            .instance_id(&new_id)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .expect("CompleteLifecycleAction CONTINUE (terminate)");
        wait_ec2_state(&model, region, &new_id, "terminated").await;
        let gone = model
            .instance(&new_id)
            .await
            .expect("model")
            .expect("still listed");
        assert_eq!(gone.lifecycle_state, "Terminated");
        assert_eq!(imds_target_state(&imds).await, "Terminated");
        let remaining = wait_group(&asg, |states| states.len() == 2).await;
        assert!(
            remaining
                .iter()
                .all(|(id, state)| before.contains(id) && state == "InService")
        );
    })
    .await;
}

#[tokio::test]
async fn default_results_apply_after_the_advanced_timeout() {
    bounded(async {
        let model = AwsModel::start().await.expect("AWS model");
        let region = "eu-central-1";
        let asg = group_with_hooks(&model, region, 2, 5).await;
        let states = group_states(&asg).await;
        let victim = states[0].0.clone();

        // Terminate hook, nobody answers: after 300 s the DefaultResult (CONTINUE) terminates it.
        asg.terminate_instance_in_auto_scaling_group()
            .instance_id(&victim)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .expect("TerminateInstanceInAutoScalingGroup");
        wait_instance_state(&asg, &victim, "Terminating:Wait").await;
        model
            .advance_clock(f64::from(HEARTBEAT_TIMEOUT) - 10.0)
            .await
            .expect("advance");
        assert_eq!(
            instance_state(&asg, &victim).await.as_deref(),
            Some("Terminating:Wait")
        );
        model
            .advance_clock(20.0)
            .await
            .expect("advance past the timeout");
        wait_ec2_state(&model, region, &victim, "terminated").await;

        // Launch hook, nobody answers: after 300 s the DefaultResult (ABANDON) terminates the
        // instance and the group launches a replacement, which waits in turn.
        asg.set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(2)
            .honor_cooldown(false)
            .send()
            .await
            .expect("SetDesiredCapacity 2");
        let states = wait_group(&asg, |states| {
            states.iter().any(|(_, s)| s == "Pending:Wait")
        })
        .await;
        let (launched, _) = states
            .iter()
            .find(|(_, s)| s == "Pending:Wait")
            .cloned()
            .expect("a waiting launch");
        model
            .advance_clock(f64::from(HEARTBEAT_TIMEOUT) + 1.0)
            .await
            .expect("advance past the timeout");
        wait_ec2_state(&model, region, &launched, "terminated").await;
        let states = wait_group(&asg, |states| {
            states
                .iter()
                .any(|(id, s)| id != &launched && s == "Pending:Wait")
        })
        .await;
        assert!(
            !states.iter().any(|(id, _)| id == &launched),
            "the abandoned instance left the group"
        );
        assert_eq!(desired_capacity(&asg).await, 2);
    })
    .await;
}

#[tokio::test]
async fn validation_errors_as_aws_returns_them() {
    bounded(async {
        let model = AwsModel::start().await.expect("AWS model");
        let region = "ap-southeast-2";
        let asg = group_with_hooks(&model, region, 2, 3).await;

        let err = asg
            .set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(4)
            .send()
            .await
            .expect_err("desired above MaxSize must fail")
            .into_service_error();
        assert_eq!(err.code(), Some("ValidationError"), "{err:?}");
        assert_eq!(
            err.message(),
            Some("New SetDesiredCapacity value 4 is above max value 3 for the AutoScalingGroup.")
        );
        assert_eq!(
            desired_capacity(&asg).await,
            2,
            "a rejected request changes nothing"
        );

        let err = asg
            .set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(0)
            .send()
            .await
            .expect_err("desired below MinSize must fail")
            .into_service_error();
        assert_eq!(err.code(), Some("ValidationError"), "{err:?}");

        let err = asg
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(TERMINATE_HOOK)
            .lifecycle_action_token("00000000-0000-0000-0000-000000000000")
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .expect_err("an unknown token must fail")
            .into_service_error();
        assert_eq!(err.code(), Some("ValidationError"), "{err:?}");
        assert_eq!(
            err.message(),
            Some(
                "No active Lifecycle Action found with token 00000000-0000-0000-0000-000000000000"
            )
        );

        let err = asg
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name("no-such-hook")
            .instance_id("i-00000000000000000")
            .send()
            .await
            .expect_err("an unknown hook must fail")
            .into_service_error();
        assert_eq!(err.code(), Some("ValidationError"), "{err:?}");
        assert!(
            err.message()
                .is_some_and(|m| m.starts_with("No Lifecycle Hook found")),
            "{err:?}"
        );
    })
    .await;
}
