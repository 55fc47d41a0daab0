//! SNS notifications and CloudWatch metrics against the AWS model (moto serves SNS, SQS and
//! CloudWatch): an executed action reaches an SQS queue subscribed to the topic, with the
//! message attributes filter policies match on; failed cycles notify `event=errors`; the
//! cycle's figures are readable with GetMetricData, one datum of each per cycle.

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use serde_json::{Value, json};
use smartscale_testworld::aws::AutoScalingFault;
use smartscale_testworld::lambda_rie::{
    Function, FunctionOptions, IDENTITY_SECRET, publish_identity, put_config_parameter,
    scheduled_event,
};
use smartscale_testworld::process::poll_until;
use smartscale_testworld::prometheus::Prometheus;
use smartscale_testworld::world::{World, WorldOptions, controller_config_text, prometheus_at};
use std::collections::HashMap;
use std::time::Duration;

const PARAMETER: &str = "/smartscale/e2e/controller/config";

/// A world with three pods that need three more nodes (new instances stay booting), real
/// Prometheus at 50 % CPU, the function's identity in Secrets Manager, and `extra` config.
async fn world(extra: &str) -> (World, Prometheus) {
    let w = World::start(WorldOptions {
        workers: 2,
        auto_join: false,
        ..WorldOptions::default()
    })
    .await
    .unwrap();
    let (_, instances) = w.group().await.unwrap();
    for (id, _) in &instances {
        w.register_node(id).await.unwrap();
    }
    let prom = prometheus_at(50.0, 40.0, 2).await.unwrap();
    let text = controller_config_text("e2e", &w.table, &w.asg_name, prom.url(), extra);
    put_config_parameter(&w, PARAMETER, &text).await.unwrap();
    publish_identity(&w).await.unwrap();
    for i in 0..5 {
        w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({}))
            .await
            .unwrap();
    }
    poll_until("3 unschedulable pods", Duration::from_secs(10), || async {
        Ok((w.unschedulable_pods().await? == 3).then_some(()))
    })
    .await
    .unwrap();
    (w, prom)
}

async fn function(w: &World) -> Function {
    Function::start(
        w,
        FunctionOptions {
            timeout_s: 30,
            env: vec![
                ("SMARTSCALE_CONFIG_PARAMETER".into(), PARAMETER.into()),
                (
                    "SMARTSCALE_KUBERNETES_SECRET".into(),
                    IDENTITY_SECRET.into(),
                ),
            ],
        },
    )
    .await
    .unwrap()
}

/// A topic and a queue subscribed to it with `filter` (a subscription filter policy).
async fn topic_with_queue(
    w: &World,
    topic: &str,
    queues: &[(&str, Value)],
) -> (String, aws_sdk_sqs::Client, Vec<String>) {
    let sdk = w.aws.sdk_config(&w.region);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let arn = sns
        .create_topic()
        .name(topic)
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let mut urls = Vec::new();
    for (name, filter) in queues {
        let url = sqs
            .create_queue()
            .queue_name(*name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .unwrap();
        sns.subscribe()
            .topic_arn(&arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("FilterPolicy", filter.to_string())
            .send()
            .await
            .unwrap();
        urls.push(url);
    }
    (arn, sqs, urls)
}

/// The SNS envelopes in the queue, waiting up to `within` for at least one.
async fn received(sqs: &aws_sdk_sqs::Client, url: &str, within: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let msgs = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in msgs.messages() {
            out.push(serde_json::from_str(m.body().unwrap_or_default()).unwrap());
        }
        if !out.is_empty() || std::time::Instant::now() >= deadline {
            return out;
        }
    }
}

fn attribute<'a>(envelope: &'a Value, name: &str) -> &'a Value {
    &envelope["MessageAttributes"][name]["Value"]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executed_action_reaches_a_subscribed_queue_with_attributes_to_filter_on() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let topic_arn = "arn:aws:sns:us-east-1:123456789012:smartscale-e2e";
        let (w, _prom) = world(&format!(
            "notifications: {{sns_topic_arn: '{topic_arn}', error_threshold: 1}}"
        ))
        .await;
        let (arn, sqs, urls) = topic_with_queue(
            &w,
            "smartscale-e2e",
            &[
                (
                    "scale-ups",
                    json!({"event": ["action"], "action": ["scale_up"]}),
                ),
                ("errors", json!({"event": ["errors"]})),
            ],
        )
        .await;
        assert_eq!(arn, topic_arn);
        let f = function(&w).await;
        let r = f.invoke(&scheduled_event(&w.region)).await.unwrap();
        assert!(!r.failed(), "{} / {}", r.text, f.log());
        assert_eq!(r.body["action"], "scale_up");
        assert_eq!(r.body["problems"], json!([]), "{}", r.body);

        let ups = received(&sqs, &urls[0], Duration::from_secs(10)).await;
        assert_eq!(ups.len(), 1, "{ups:?}");
        let m = &ups[0];
        assert_eq!(m["TopicArn"], topic_arn);
        assert!(
            m["Message"]
                .as_str()
                .unwrap_or_default()
                .contains("scale_up smartscale-workers 2 → 5"),
            "{m}"
        );
        assert!(
            m["Subject"]
                .as_str()
                .unwrap_or_default()
                .contains("scale_up"),
            "{m}"
        );
        assert_eq!(attribute(m, "event"), "action", "{m}");
        assert_eq!(attribute(m, "action"), "scale_up", "{m}");
        assert_eq!(attribute(m, "cluster_id"), "e2e", "{m}");
        assert_eq!(attribute(m, "node_group"), "smartscale-workers", "{m}");
        assert_eq!(attribute(m, "to"), "5", "{m}");
        assert_eq!(m["MessageAttributes"]["to"]["Type"], "Number", "{m}");
        // The errors queue's filter keeps the action out.
        assert_eq!(
            received(&sqs, &urls[1], Duration::ZERO).await,
            Vec::<Value>::new()
        );

        // Failing cycles notify `event=errors` (threshold 1): Auto Scaling throttles every call.
        w.aws
            .client()
            .add_autoscaling_fault(&AutoScalingFault {
                action: "DescribeAutoScalingGroups".into(),
                code: Some("Throttling".into()),
                ..AutoScalingFault::default()
            })
            .await
            .unwrap();
        let r = f.invoke(&scheduled_event(&w.region)).await.unwrap();
        assert!(r.failed(), "{}", r.text);
        assert_eq!(
            r.error_type.as_deref(),
            Some("SmartScale.aws"),
            "{}",
            r.text
        );
        let errors = received(&sqs, &urls[1], Duration::from_secs(10)).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(attribute(&errors[0], "event"), "errors", "{}", errors[0]);
        assert!(
            errors[0]["Message"]
                .as_str()
                .unwrap_or_default()
                .contains("1 failed cycles in a row"),
            "{}",
            errors[0]
        );
        assert_eq!(
            received(&sqs, &urls[0], Duration::ZERO).await,
            Vec::<Value>::new()
        );
        f.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cycle_figures_are_readable_with_get_metric_data() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let (w, _prom) = world("cloudwatch: {enabled: true}").await;
        let f = function(&w).await;
        // A malformed event: still decides and acts, and the problem is counted in Errors.
        let r = f.invoke(&json!({"source": "aws.s3"})).await.unwrap();
        assert!(!r.failed(), "{} / {}", r.text, f.log());
        assert_eq!(r.body["action"], "scale_up");
        assert_eq!(
            r.body["problems"].as_array().map(Vec::len),
            Some(1),
            "{}",
            r.body
        );

        let cw = aws_sdk_cloudwatch::Client::new(&w.aws.sdk_config(&w.region));
        let names = [
            "ClusterCPU",
            "ClusterMemory",
            "NodeCount",
            "PendingPods",
            "ScaleUpEvents",
            "ScaleDownEvents",
            "CycleDuration",
            "ExecutionTime",
            "Errors",
        ];
        let now =
            aws_sdk_cloudwatch::primitives::DateTime::from_secs(jiff::Timestamp::now().as_second());
        let from = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() - 600);
        let to = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() + 600);
        let mut req = cw.get_metric_data().start_time(from).end_time(to);
        for (i, name) in names.iter().enumerate() {
            req = req.metric_data_queries(
                MetricDataQuery::builder()
                    .id(format!("m{i}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace("SmartScale/Autoscaler")
                                    .metric_name(*name)
                                    .dimensions(
                                        Dimension::builder().name("ClusterId").value("e2e").build(),
                                    )
                                    .build(),
                            )
                            .period(60)
                            .stat("Sum")
                            .build(),
                    )
                    .build(),
            );
        }
        let out = req.send().await.unwrap();
        let values: HashMap<String, Vec<f64>> = out
            .metric_data_results()
            .iter()
            .map(|r| {
                let i: usize = r.id().unwrap_or_default()[1..].parse().unwrap();
                (names[i].to_string(), r.values().to_vec())
            })
            .collect();
        let one = |name: &str| -> f64 {
            let v = &values[name];
            assert_eq!(v.len(), 1, "{name}: one datum per cycle: {values:?}");
            v[0]
        };
        assert!((one("ClusterCPU") - 50.0).abs() < 1.0, "{values:?}");
        assert!((one("ClusterMemory") - 40.0).abs() < 1.0, "{values:?}");
        assert_eq!(one("NodeCount"), 2.0, "{values:?}");
        assert_eq!(one("PendingPods"), 3.0, "{values:?}");
        assert_eq!(one("ScaleUpEvents"), 1.0, "{values:?}");
        assert_eq!(one("ScaleDownEvents"), 0.0, "{values:?}");
        assert!(one("CycleDuration") > 0.0, "{values:?}");
        assert!(one("ExecutionTime") > one("CycleDuration"), "{values:?}");
        assert_eq!(one("Errors"), 1.0, "the malformed event: {values:?}");
        f.shutdown().await;
    })
    .await
    .expect("test timed out");
}
