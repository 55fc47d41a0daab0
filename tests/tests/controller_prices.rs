//! What each worker costs, end to end: `smartscale-controller run` against the test world, whose
//! AWS model answers the Price List API (GetProducts) and DescribeSpotPriceHistory the way AWS
//! does (decoy products included, so a missing filter reads a wrong price).

use aws_sdk_autoscaling::types::{
    InstancesDistribution, LaunchTemplate, LaunchTemplateOverrides, LaunchTemplateSpecification,
    MixedInstancesPolicy,
};
use serde_json::json;
use smartscale_testworld::process::{free_port, poll_until};
use smartscale_testworld::world::{World, WorldOptions, product_command, prometheus_at};
use std::collections::BTreeMap;
use std::time::Duration;

/// The value of every `name{...}` sample, by its label text.
fn samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

async fn spot_group(w: &World, name: &str, desired: i32) {
    let template = LaunchTemplate::builder()
        .launch_template_specification(
            LaunchTemplateSpecification::builder()
                .launch_template_name("workers")
                .build(),
        )
        .overrides(
            LaunchTemplateOverrides::builder()
                .instance_type("m5.large")
                .build(),
        )
        .build();
    w.autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .mixed_instances_policy(
            MixedInstancesPolicy::builder()
                .launch_template(template)
                .instances_distribution(
                    InstancesDistribution::builder()
                        .on_demand_base_capacity(0)
                        .on_demand_percentage_above_base_capacity(0)
                        .build(),
                )
                .build(),
        )
        .min_size(0)
        .max_size(4)
        .desired_capacity(desired)
        .availability_zones(format!("{}a", w.region))
        .availability_zones(format!("{}b", w.region))
        .send()
        .await
        .unwrap();
    w.follow_group(name);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_worker_is_priced_by_its_type_zone_and_lifecycle() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let w = World::start(WorldOptions {
            workers: 1,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let (a, b) = (format!("{}a", w.region), format!("{}b", w.region));
        // Prices no default has, so that each number below can only come from a lookup.
        w.aws
            .client()
            .set_prices(&json!({
                "region": w.region,
                "on_demand": {"t3.medium": 0.0418, "m5.large": 0.0961},
                "spot": {a.clone(): {"m5.large": 0.0311}, b.clone(): {"m5.large": 0.0322}},
            }))
            .await
            .unwrap();
        spot_group(&w, "spot-workers", 2).await;
        w.wait_nodes("3 workers", Duration::from_secs(60), |n| n == 3)
            .await
            .unwrap();

        let prom = prometheus_at(50.0, 50.0, 3).await.unwrap();
        let port = free_port().unwrap();
        // The groups' configured prices are deliberately wrong: they apply only until a lookup lands.
        let cfg = w.dir.path().join("prices.yaml");
        std::fs::write(
            &cfg,
            format!(
                "cluster_id: e2e\ninterval: 1s\nprometheus: {{url: '{}', timeout: 500ms}}\nstate: {{table: {}, lease_ttl: 3s}}\n\
                 node_groups:\n  - {{asg_name: {}, min: 1, max: 10, hourly_price: 0.5}}\n  - {{asg_name: spot-workers, min: 0, max: 4, hourly_price: 0.5}}\n\
                 api: {{listen: '127.0.0.1:{port}'}}\ndry_run: true\n",
                prom.url(),
                w.table,
                w.asg_name
            ),
        )
        .unwrap();
        let log = w.dir.path().join("controller.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = product_command(&w, "smartscale-controller")
            .unwrap()
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

        // Every node priced from AWS, none from the configured fallback.
        let metrics = poll_until("every node priced from AWS", Duration::from_secs(60), || async {
            let Ok(resp) = reqwest::get(&url).await else {
                return Ok(None);
            };
            let text = resp.text().await.unwrap_or_default();
            let costs = samples(&text, "smartscale_node_hourly_cost_dollars");
            let looked_up = costs.len() == 3
                && costs
                    .keys()
                    .all(|l| matches!(label(l, "price_source"), "price_list" | "spot_price_history"));
            Ok(looked_up.then_some(text))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", read_log()));

        let costs = samples(&metrics, "smartscale_node_hourly_cost_dollars");
        let mut spot = BTreeMap::new();
        for (labels, dollars) in &costs {
            match label(labels, "capacity_type") {
                "on-demand" => {
                    assert_eq!(label(labels, "instance_type"), "t3.medium", "{labels}");
                    assert_eq!(label(labels, "price_source"), "price_list", "{labels}");
                    assert_eq!(*dollars, 0.0418, "{labels}");
                }
                "spot" => {
                    assert_eq!(label(labels, "instance_type"), "m5.large", "{labels}");
                    assert_eq!(label(labels, "price_source"), "spot_price_history", "{labels}");
                    spot.insert(label(labels, "zone").to_string(), *dollars);
                }
                other => panic!("capacity_type {other:?} in {labels}"),
            }
        }
        // The ASG balanced its two spot instances over both zones; each has its zone's price.
        assert_eq!(spot, BTreeMap::from([(a, 0.0311), (b, 0.0322)]), "{metrics}");

        let group_cost = samples(&metrics, "smartscale_estimated_hourly_cost_dollars");
        let of = |group: &str| {
            group_cost
                .iter()
                .find(|(l, _)| label(l, "node_group") == group)
                .map(|(_, v)| *v)
        };
        assert_eq!(of(&w.asg_name), Some(0.0418), "{metrics}");
        let spot_total = of("spot-workers").unwrap_or_default();
        assert!((spot_total - 0.0633).abs() < 1e-9, "{spot_total}\n{metrics}");
        // The static-fleet baseline: the spot type's on-demand price, looked up too.
        let group_prices = samples(&metrics, "smartscale_node_hourly_price_dollars");
        assert!(
            group_prices.iter().any(|(l, v)| label(l, "node_group") == "spot-workers"
                && label(l, "capacity_type") == "on-demand"
                && *v == 0.0961),
            "{metrics}"
        );
        let calls = samples(&metrics, "smartscale_aws_calls_total");
        assert!(
            calls.keys().any(|l| label(l, "operation") == "GetProducts"),
            "{metrics}"
        );
        child.kill().await.ok();
    })
    .await
    .expect("the test's time ran out");
}
