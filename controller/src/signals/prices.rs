//! What each worker costs per hour: on-demand prices from the AWS Price List API (`GetProducts`,
//! served from us-east-1), spot prices from EC2's `DescribeSpotPriceHistory` per instance type and
//! zone. Looked up in the background and cached (`prices.refresh`), so a slow or unreachable
//! pricing endpoint never delays a decision; until a lookup lands, or where it failed, the group's
//! configured `hourly_price` applies and the metric's `price_source` says so.

use crate::metrics::AwsCalls;
use aws_sdk_pricing::types::{Filter, FilterType};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The Price List Query API has endpoints in us-east-1, eu-central-1 and ap-south-1 only; it
/// prices every region from each.
pub const PRICING_REGION: &str = "us-east-1";
/// After a failed lookup, how long before it is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// One background lookup, all calls included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a quoted price came from (the `price_source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// The on-demand price of the type in this region (AWS Price List API).
    PriceList,
    /// The current spot price of the type in the node's zone (DescribeSpotPriceHistory).
    SpotPriceHistory,
    /// The group's configured `hourly_price` (lookup off, not done yet, or failed).
    GroupPrice,
    /// Nothing known: no lookup result and no configured price.
    Unknown,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::PriceList => "price_list",
            PriceSource::SpotPriceHistory => "spot_price_history",
            PriceSource::GroupPrice => "group_price",
            PriceSource::Unknown => "none",
        }
    }
}

/// An hourly price and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quote {
    pub dollars: f64,
    pub source: PriceSource,
}

/// What is priced: an instance type, its zone and whether it runs as spot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priced {
    pub instance_type: String,
    pub zone: String,
    pub spot: bool,
}

impl Priced {
    /// From the node's labels: `capacity_type` is `spot` for spot nodes (anything else, an
    /// unknown one included, is priced on-demand, the higher bound).
    pub fn new(instance_type: &str, zone: &str, capacity_type: &str) -> Priced {
        Priced {
            instance_type: instance_type.to_string(),
            zone: zone.to_string(),
            spot: capacity_type.eq_ignore_ascii_case("spot"),
        }
    }

    fn known(&self) -> bool {
        !self.instance_type.is_empty() && self.instance_type != "unknown"
    }
}

/// A looked-up price: `None` when the lookup failed or AWS had none.
#[derive(Debug, Clone, Copy)]
struct Entry {
    price: Option<f64>,
    at: Instant,
}

impl Entry {
    /// Whether it is due for another lookup at `now`.
    fn stale(&self, now: Instant, refresh: Duration) -> bool {
        let ttl = if self.price.is_some() {
            refresh
        } else {
            RETRY_AFTER_FAILURE.min(refresh)
        };
        now.duration_since(self.at) >= ttl
    }
}

#[derive(Debug, Default)]
struct Cache {
    on_demand: HashMap<String, Entry>,
    /// By (instance type, zone).
    spot: HashMap<(String, String), Entry>,
}

/// The AWS clients of the lookups.
#[derive(Clone)]
struct Lookup {
    pricing: aws_sdk_pricing::Client,
    ec2: aws_sdk_ec2::Client,
    region: String,
    calls: AwsCalls,
}

struct Inner {
    lookup: Option<Lookup>,
    refresh: Duration,
    cache: Mutex<Cache>,
    running: AtomicBool,
}

/// The cached prices of the cluster's workers (cheap to clone; clones share the cache).
#[derive(Clone)]
pub struct PriceBook(Arc<Inner>);

impl PriceBook {
    /// Looks prices up through `sdk` (its region is the cluster's; the Price List API is asked in
    /// [`PRICING_REGION`]). `lookup: false` keeps to the configured prices.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        lookup: bool,
        refresh: Duration,
        calls: AwsCalls,
    ) -> PriceBook {
        let lookup = lookup
            .then(|| sdk.region().map(|r| r.to_string()))
            .flatten()
            .map(|region| {
                let pricing = aws_sdk_pricing::config::Builder::from(sdk)
                    .region(aws_sdk_pricing::config::Region::new(PRICING_REGION))
                    .build();
                Lookup {
                    pricing: aws_sdk_pricing::Client::from_conf(pricing),
                    ec2: aws_sdk_ec2::Client::new(sdk),
                    region,
                    calls,
                }
            });
        PriceBook::with(lookup, refresh)
    }

    /// Configured prices only.
    pub fn offline() -> PriceBook {
        PriceBook::with(None, Duration::from_secs(3600))
    }

    fn with(lookup: Option<Lookup>, refresh: Duration) -> PriceBook {
        PriceBook(Arc::new(Inner {
            lookup,
            refresh,
            cache: Mutex::new(Cache::default()),
            running: AtomicBool::new(false),
        }))
    }

    /// The price of one `what`: the looked-up one, else `fallback` (the group's configured price).
    pub fn quote(&self, what: &Priced, fallback: Option<f64>) -> Quote {
        let cache = self.cache();
        let found = if what.spot {
            cache
                .spot
                .get(&(what.instance_type.clone(), what.zone.clone()))
                .and_then(|e| e.price)
                .map(|p| (p, PriceSource::SpotPriceHistory))
        } else {
            cache
                .on_demand
                .get(&what.instance_type)
                .and_then(|e| e.price)
                .map(|p| (p, PriceSource::PriceList))
        };
        match (found, fallback) {
            (Some((dollars, source)), _) => Quote { dollars, source },
            (None, Some(dollars)) => Quote {
                dollars,
                source: PriceSource::GroupPrice,
            },
            (None, None) => Quote {
                dollars: 0.0,
                source: PriceSource::Unknown,
            },
        }
    }

    /// Starts a background lookup of what in `wanted` is missing or stale (on-demand prices of
    /// every type too, the baseline of spot savings); does nothing when one is running already.
    pub fn refresh_in_background(&self, wanted: impl IntoIterator<Item = Priced>) {
        let Some(lookup) = self.0.lookup.clone() else {
            return;
        };
        let due = self.due(wanted, Instant::now());
        if due.is_empty() || self.0.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let book = self.clone();
        let span = tracing::info_span!("prices", wanted = due.len());
        let task = async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, book.look_up(&lookup, &due)).await {
                Ok(()) => {}
                Err(_) => {
                    tracing::warn!(
                        seconds = LOOKUP_TIMEOUT.as_secs(),
                        "price lookup timed out; configured prices apply meanwhile"
                    );
                    book.store_failed(&due, Instant::now());
                }
            }
            book.0.running.store(false, Ordering::Release);
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// What of `wanted` needs a lookup at `now` (spot wants the type's on-demand price too).
    fn due(&self, wanted: impl IntoIterator<Item = Priced>, now: Instant) -> Vec<Priced> {
        let cache = self.cache();
        let refresh = self.0.refresh;
        let mut due = BTreeSet::new();
        for w in wanted.into_iter().filter(Priced::known) {
            let od = Priced {
                spot: false,
                zone: String::new(),
                ..w.clone()
            };
            if cache
                .on_demand
                .get(&w.instance_type)
                .is_none_or(|e| e.stale(now, refresh))
            {
                due.insert(od);
            }
            if w.spot
                && cache
                    .spot
                    .get(&(w.instance_type.clone(), w.zone.clone()))
                    .is_none_or(|e| e.stale(now, refresh))
            {
                due.insert(w);
            }
        }
        due.into_iter().collect()
    }

    async fn look_up(&self, lookup: &Lookup, due: &[Priced]) {
        for p in due.iter().filter(|p| !p.spot) {
            let price = match on_demand_price(lookup, &p.instance_type).await {
                Ok(Some(price)) => Some(price),
                Ok(None) => {
                    tracing::warn!(
                        instance_type = %p.instance_type,
                        region = %lookup.region,
                        "the Price List API has no Linux on-demand price for this type; the group's hourly_price applies"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, instance_type = %p.instance_type, "on-demand price lookup failed; the group's hourly_price applies");
                    None
                }
            };
            let mut cache = self.cache();
            cache.on_demand.insert(
                p.instance_type.clone(),
                Entry {
                    price,
                    at: Instant::now(),
                },
            );
        }
        let spot: Vec<&Priced> = due.iter().filter(|p| p.spot).collect();
        if spot.is_empty() {
            return;
        }
        let types: BTreeSet<String> = spot.iter().map(|p| p.instance_type.clone()).collect();
        let found = match spot_prices(lookup, &types).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "spot price lookup failed; the group's hourly_price applies");
                HashMap::new()
            }
        };
        let now = Instant::now();
        let mut cache = self.cache();
        for p in spot {
            let key = (p.instance_type.clone(), p.zone.clone());
            let price = found.get(&key).copied();
            cache.spot.insert(key, Entry { price, at: now });
        }
    }

    fn store_failed(&self, due: &[Priced], now: Instant) {
        let mut cache = self.cache();
        let failed = Entry {
            price: None,
            at: now,
        };
        for p in due {
            if p.spot {
                cache
                    .spot
                    .entry((p.instance_type.clone(), p.zone.clone()))
                    .or_insert(failed);
            } else {
                cache
                    .on_demand
                    .entry(p.instance_type.clone())
                    .or_insert(failed);
            }
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding it leaves plain data behind; keep using it.
        self.0.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The filters that select the one product a Linux instance on shared tenancy is billed by
/// (as Karpenter's pricing provider selects it): without each, GetProducts also answers Windows,
/// Dedicated, capacity-reservation or pre-installed-software products at other prices.
fn on_demand_filters(instance_type: &str, region: &str) -> Vec<Filter> {
    [
        ("instanceType", instance_type),
        ("regionCode", region),
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
    ]
    .into_iter()
    .filter_map(|(field, value)| {
        Filter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .ok()
    })
    .collect()
}

async fn on_demand_price(lookup: &Lookup, instance_type: &str) -> Result<Option<f64>, String> {
    lookup.calls.count("pricing", "GetProducts");
    let mut pages = lookup
        .pricing
        .get_products()
        .service_code("AmazonEC2")
        .format_version("aws_v1")
        .set_filters(Some(on_demand_filters(instance_type, &lookup.region)))
        .into_paginator()
        .send();
    let mut prices = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_sdk_pricing::error::DisplayErrorContext(e).to_string())?;
        for doc in page.price_list() {
            prices.extend(on_demand_usd(doc)?);
        }
    }
    // One product is expected; with several (a new attribute split it), the dearest is the bound.
    Ok(prices.into_iter().reduce(f64::max))
}

/// The hourly USD price of a GetProducts `PriceList` entry's on-demand terms.
fn on_demand_usd(doc: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("a PriceList entry is not JSON: {e}"))?;
    let terms = v
        .pointer("/terms/OnDemand")
        .and_then(|t| t.as_object())
        .into_iter()
        .flat_map(|t| t.values());
    let mut best: Option<f64> = None;
    for term in terms {
        let dims = term
            .get("priceDimensions")
            .and_then(|d| d.as_object())
            .into_iter()
            .flat_map(|d| d.values());
        for dim in dims {
            if dim.get("unit").and_then(|u| u.as_str()) != Some("Hrs") {
                continue;
            }
            let usd = dim
                .pointer("/pricePerUnit/USD")
                .and_then(|p| p.as_str())
                .and_then(|p| p.parse::<f64>().ok());
            if let Some(usd) = usd.filter(|p| p.is_finite() && *p > 0.0) {
                best = Some(best.map_or(usd, |b| b.max(usd)));
            }
        }
    }
    Ok(best)
}

/// The current Linux spot price of each type per zone in the region.
async fn spot_prices(
    lookup: &Lookup,
    types: &BTreeSet<String>,
) -> Result<HashMap<(String, String), f64>, String> {
    lookup.calls.count("ec2", "DescribeSpotPriceHistory");
    // A start time of now answers the price in effect now, one entry per type and zone.
    let mut pages = lookup
        .ec2
        .describe_spot_price_history()
        .set_instance_types(Some(
            types
                .iter()
                .map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str()))
                .collect(),
        ))
        .product_descriptions("Linux/UNIX")
        .start_time(aws_sdk_ec2::primitives::DateTime::from(SystemTime::now()))
        .into_paginator()
        .send();
    let mut newest: HashMap<(String, String), (i64, f64)> = HashMap::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())?;
        for p in page.spot_price_history() {
            let (Some(t), Some(zone), Some(price)) = (
                p.instance_type().map(|t| t.as_str().to_string()),
                p.availability_zone(),
                p.spot_price().and_then(|s| s.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if !price.is_finite() || price <= 0.0 {
                continue;
            }
            let at = p.timestamp().map(|t| t.secs()).unwrap_or(i64::MIN);
            let slot = newest
                .entry((t, zone.to_string()))
                .or_insert((i64::MIN, price));
            if at >= slot.0 {
                *slot = (at, price);
            }
        }
    }
    Ok(newest.into_iter().map(|(k, (_, p))| (k, p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"product":{"productFamily":"Compute Instance","attributes":{"instanceType":"m5.large"}},
        "terms":{"OnDemand":{"X.JRTCKXETXF":{"priceDimensions":{"X.JRTCKXETXF.6YS6EN2CT7":
        {"unit":"Hrs","pricePerUnit":{"USD":"0.0960000000"}}}}},
        "Reserved":{"X.Y":{"priceDimensions":{"X.Y.Z":{"unit":"Hrs","pricePerUnit":{"USD":"0.0600000000"}}}}}}}"#;

    #[test]
    fn the_on_demand_price_is_read_from_the_on_demand_terms_only() {
        assert_eq!(on_demand_usd(DOC).expect("parses"), Some(0.096));
        // A zero "first hour free" style dimension or an upfront fee is not an hourly price.
        let zero = DOC.replace("0.0960000000", "0.0000000000");
        assert_eq!(on_demand_usd(&zero).expect("parses"), None);
        assert!(on_demand_usd("not json").is_err());
    }

    #[test]
    fn every_filter_that_tells_the_linux_shared_product_apart_is_sent() {
        let fields: Vec<(String, String)> = on_demand_filters("m5.large", "eu-west-1")
            .iter()
            .map(|f| (f.field().to_string(), f.value().to_string()))
            .collect();
        for want in [
            ("instanceType", "m5.large"),
            ("regionCode", "eu-west-1"),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ] {
            assert!(
                fields.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn a_price_not_looked_up_falls_back_to_the_groups_then_to_none() {
        let b = PriceBook::offline();
        let spot = Priced::new("m5.large", "us-east-1a", "spot");
        assert_eq!(
            b.quote(&spot, Some(0.05)),
            Quote {
                dollars: 0.05,
                source: PriceSource::GroupPrice
            }
        );
        assert_eq!(b.quote(&spot, None).source, PriceSource::Unknown);
    }

    #[test]
    fn spot_is_priced_per_zone_and_on_demand_per_type() {
        let b = PriceBook::with(None, Duration::from_secs(3600));
        let now = Instant::now();
        {
            let mut c = b.cache();
            c.on_demand.insert(
                "m5.large".into(),
                Entry {
                    price: Some(0.096),
                    at: now,
                },
            );
            c.spot.insert(
                ("m5.large".into(), "us-east-1a".into()),
                Entry {
                    price: Some(0.03),
                    at: now,
                },
            );
        }
        let q = |zone: &str, ct: &str| b.quote(&Priced::new("m5.large", zone, ct), Some(0.5));
        assert_eq!(q("us-east-1a", "spot").dollars, 0.03);
        assert_eq!(
            q("us-east-1a", "spot").source,
            PriceSource::SpotPriceHistory
        );
        // Another zone's spot price is not known: the configured price, not zone a's.
        assert_eq!(q("us-east-1b", "spot").source, PriceSource::GroupPrice);
        assert_eq!(q("us-east-1b", "on-demand").dollars, 0.096);
        assert_eq!(q("us-east-1b", "unknown").source, PriceSource::PriceList);
    }

    #[test]
    fn prices_are_looked_up_again_once_stale_and_failures_sooner() {
        let refresh = Duration::from_secs(3600);
        let b = PriceBook::with(None, refresh);
        let t0 = Instant::now();
        let wanted = || {
            vec![
                Priced::new("m5.large", "us-east-1a", "spot"),
                Priced::new("c5.large", "us-east-1b", "on-demand"),
                Priced::new("unknown", "us-east-1b", "on-demand"),
            ]
        };
        // Nothing known: m5.large on-demand (the spot baseline) and spot, c5.large on-demand.
        assert_eq!(b.due(wanted(), t0).len(), 3);
        {
            let mut c = b.cache();
            for t in ["m5.large", "c5.large"] {
                c.on_demand.insert(
                    t.into(),
                    Entry {
                        price: Some(0.1),
                        at: t0,
                    },
                );
            }
            c.spot.insert(
                ("m5.large".into(), "us-east-1a".into()),
                Entry {
                    price: None,
                    at: t0,
                },
            );
        }
        assert!(b.due(wanted(), t0).is_empty());
        // The failed spot lookup is retried after RETRY_AFTER_FAILURE, the others after refresh.
        let due = b.due(wanted(), t0 + RETRY_AFTER_FAILURE);
        assert_eq!(
            due,
            vec![Priced::new("m5.large", "us-east-1a", "spot")],
            "{due:?}"
        );
        assert_eq!(b.due(wanted(), t0 + refresh).len(), 3);
    }
}
