//! What each worker costs per hour: on-demand prices from the AWS Price List API (`GetProducts`,
//! served from us-east-1), spot prices from EC2's `DescribeSpotPriceHistory` per instance type and
//! zone. Looked up in the background and cached (`prices.refresh`), so a slow or unreachable
//! pricing endpoint never delays a decision. A failed lookup keeps the last price it found and is
//! tried again after [`RETRY_AFTER_FAILURE`]; until a lookup lands, or where none ever found a price,
//! the group's configured `hourly_price` applies and the metric's `price_source` says so.

use crate::metrics::AwsCalls;
use aws_sdk_pricing::types::{Filter, FilterType};
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
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

/// A looked-up price: `None` when AWS had none or no lookup has found one yet.
#[derive(Debug, Clone, Copy)]
struct Entry {
    price: Option<f64>,
    /// When it was last looked up, successfully or not.
    at: Instant,
    /// The last lookup failed: `price` is the one found before, if any.
    failed: bool,
}

impl Entry {
    /// Whether it is due for another lookup at `now`.
    fn stale(&self, now: Instant, refresh: Duration) -> bool {
        let ttl = if self.price.is_some() && !self.failed {
            refresh
        } else {
            RETRY_AFTER_FAILURE.min(refresh)
        };
        now.duration_since(self.at) >= ttl
    }
}

/// A lookup that failed (an error or the timeout), as opposed to one that found no price.
#[derive(Debug, Clone, Copy)]
struct Failed;

/// Records under `key` what a lookup at `now` answered: the price (`None` when AWS has none) or,
/// when it failed, the last known price kept and the entry due again after [`RETRY_AFTER_FAILURE`].
fn record<K: Eq + Hash>(
    entries: &mut HashMap<K, Entry>,
    key: K,
    looked: Result<Option<f64>, Failed>,
    now: Instant,
) {
    match looked {
        Ok(price) => {
            entries.insert(
                key,
                Entry {
                    price,
                    at: now,
                    failed: false,
                },
            );
        }
        Err(Failed) => {
            let entry = entries.entry(key).or_insert(Entry {
                price: None,
                at: now,
                failed: true,
            });
            entry.at = now;
            entry.failed = true;
        }
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
            let started = Instant::now();
            match tokio::time::timeout(LOOKUP_TIMEOUT, book.look_up(&lookup, &due)).await {
                Ok(()) => {}
                Err(_) => {
                    tracing::warn!(
                        seconds = LOOKUP_TIMEOUT.as_secs(),
                        "price lookup timed out; the last known prices, else the configured ones, apply meanwhile"
                    );
                    book.store_failed(&due, started, Instant::now());
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
            let looked = match on_demand_price(lookup, &p.instance_type).await {
                Ok(Some(price)) => Ok(Some(price)),
                Ok(None) => {
                    tracing::warn!(
                        instance_type = %p.instance_type,
                        region = %lookup.region,
                        "the Price List API has no Linux on-demand price for this type; the group's hourly_price applies"
                    );
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!(error = %e, instance_type = %p.instance_type, "on-demand price lookup failed; the last known price, else the group's hourly_price, applies");
                    Err(Failed)
                }
            };
            self.store_on_demand(&p.instance_type, looked, Instant::now());
        }
        let spot: Vec<&Priced> = due.iter().filter(|p| p.spot).collect();
        if spot.is_empty() {
            return;
        }
        let types: BTreeSet<String> = spot.iter().map(|p| p.instance_type.clone()).collect();
        let found = spot_prices(lookup, &types).await.map_err(|e| {
            tracing::warn!(error = %e, "spot price lookup failed; the last known prices, else the group's hourly_price, apply");
            Failed
        });
        self.store_spot(&spot, found.as_ref().map_err(|f| *f), Instant::now());
    }

    /// Records the answer of the on-demand lookup of `instance_type` at `now`.
    fn store_on_demand(
        &self,
        instance_type: &str,
        looked: Result<Option<f64>, Failed>,
        now: Instant,
    ) {
        record(
            &mut self.cache().on_demand,
            instance_type.to_string(),
            looked,
            now,
        );
    }

    /// Records the answer of the spot lookup of `spot` at `now`: a zone it did not answer has no price.
    fn store_spot(
        &self,
        spot: &[&Priced],
        found: Result<&HashMap<(String, String), f64>, Failed>,
        now: Instant,
    ) {
        let mut cache = self.cache();
        for p in spot {
            let key = (p.instance_type.clone(), p.zone.clone());
            let looked = found.map(|found| found.get(&key).copied());
            record(&mut cache.spot, key, looked, now);
        }
    }

    /// Records at `now` that the lookup of `due`, begun at `started`, timed out: what it stored
    /// before then stays as stored.
    fn store_failed(&self, due: &[Priced], started: Instant, now: Instant) {
        let mut cache = self.cache();
        let unanswered = |e: Option<&Entry>| e.is_none_or(|e| e.at < started);
        for p in due {
            if p.spot {
                let key = (p.instance_type.clone(), p.zone.clone());
                if unanswered(cache.spot.get(&key)) {
                    record(&mut cache.spot, key, Err(Failed), now);
                }
            } else if unanswered(cache.on_demand.get(&p.instance_type)) {
                record(
                    &mut cache.on_demand,
                    p.instance_type.clone(),
                    Err(Failed),
                    now,
                );
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
                    failed: false,
                },
            );
            c.spot.insert(
                ("m5.large".into(), "us-east-1a".into()),
                Entry {
                    price: Some(0.03),
                    at: now,
                    failed: false,
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
                        failed: false,
                    },
                );
            }
            c.spot.insert(
                ("m5.large".into(), "us-east-1a".into()),
                Entry {
                    price: None,
                    at: t0,
                    failed: true,
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

    const REFRESH: Duration = Duration::from_secs(3600);

    fn m5_on_demand() -> Priced {
        Priced::new("m5.large", "", "on-demand")
    }

    fn m5_spot() -> Priced {
        Priced::new("m5.large", "us-east-1a", "spot")
    }

    /// A book that looked up m5.large's on-demand (0.096) and zone-a spot (0.03) prices at `at`.
    fn book_that_knew_m5_at(at: Instant) -> PriceBook {
        let b = PriceBook::with(None, REFRESH);
        b.store_on_demand("m5.large", Ok(Some(0.096)), at);
        let found = HashMap::from([(("m5.large".into(), "us-east-1a".into()), 0.03)]);
        b.store_spot(&[&m5_spot()], Ok(&found), at);
        b
    }

    fn known_m5_quotes_are_kept(b: &PriceBook) {
        assert_eq!(
            b.quote(&m5_on_demand(), Some(0.5)),
            Quote {
                dollars: 0.096,
                source: PriceSource::PriceList
            }
        );
        assert_eq!(
            b.quote(&m5_spot(), Some(0.5)),
            Quote {
                dollars: 0.03,
                source: PriceSource::SpotPriceHistory
            }
        );
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_known_price_and_its_source() {
        let t0 = Instant::now();
        let t1 = t0 + REFRESH;
        // The lookup answered with an error.
        let b = book_that_knew_m5_at(t0);
        b.store_on_demand("m5.large", Err(Failed), t1);
        b.store_spot(&[&m5_spot()], Err(Failed), t1);
        known_m5_quotes_are_kept(&b);
        // The lookup timed out.
        let b = book_that_knew_m5_at(t0);
        b.store_failed(&b.due([m5_spot()], t1), t1, t1 + LOOKUP_TIMEOUT);
        known_m5_quotes_are_kept(&b);
        // Kept, but retried after RETRY_AFTER_FAILURE, not after a whole refresh interval.
        let retry = t1 + LOOKUP_TIMEOUT + RETRY_AFTER_FAILURE;
        assert_eq!(b.due([m5_spot()], retry).len(), 2);
        // A later answer replaces it and is kept for the refresh interval again.
        b.store_on_demand("m5.large", Ok(Some(0.1)), retry);
        assert_eq!(b.quote(&m5_on_demand(), None).dollars, 0.1);
        assert!(
            !b.due([m5_on_demand()], retry + RETRY_AFTER_FAILURE)
                .contains(&m5_on_demand())
        );
    }

    #[test]
    fn a_failed_lookup_of_a_stale_entry_is_retried_only_after_the_retry_delay() {
        let t0 = Instant::now();
        let b = book_that_knew_m5_at(t0);
        // An entry that failed before and is due again too.
        b.store_on_demand("c5.large", Err(Failed), t0);
        let wanted = || [m5_spot(), Priced::new("c5.large", "", "on-demand")];
        let started = t0 + REFRESH;
        let due = b.due(wanted(), started);
        assert_eq!(due.len(), 3, "{due:?}");
        let failed_at = started + LOOKUP_TIMEOUT;
        b.store_failed(&due, started, failed_at);
        let just_before = failed_at + RETRY_AFTER_FAILURE - Duration::from_secs(1);
        assert!(b.due(wanted(), failed_at).is_empty());
        assert!(b.due(wanted(), just_before).is_empty());
        assert_eq!(b.due(wanted(), failed_at + RETRY_AFTER_FAILURE), due);
        // The same through an error answer rather than the timeout.
        let b = book_that_knew_m5_at(t0);
        b.store_on_demand("m5.large", Err(Failed), started);
        assert!(
            b.due([m5_on_demand()], just_before - LOOKUP_TIMEOUT)
                .is_empty()
        );
        assert_eq!(
            b.due([m5_on_demand()], started + RETRY_AFTER_FAILURE),
            vec![m5_on_demand()]
        );
    }

    #[test]
    fn a_failed_lookup_of_a_never_known_price_falls_back_and_is_retried_after_the_delay() {
        let t0 = Instant::now();
        let failed_at = t0 + LOOKUP_TIMEOUT;
        let b = PriceBook::with(None, REFRESH);
        b.store_on_demand("m5.large", Err(Failed), failed_at);
        b.store_failed(&[m5_spot()], t0, failed_at);
        for what in [m5_on_demand(), m5_spot()] {
            assert_eq!(
                b.quote(&what, Some(0.5)),
                Quote {
                    dollars: 0.5,
                    source: PriceSource::GroupPrice
                }
            );
            assert_eq!(b.quote(&what, None).source, PriceSource::Unknown);
        }
        let retry = failed_at + RETRY_AFTER_FAILURE;
        assert!(
            b.due([m5_spot()], retry - Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(b.due([m5_spot()], retry).len(), 2);
    }

    #[test]
    fn a_timeout_leaves_what_the_lookup_stored_before_it_alone() {
        let t0 = Instant::now();
        let b = PriceBook::with(None, REFRESH);
        let due = b.due([m5_spot()], t0);
        // The on-demand price landed; the spot lookup then ran out of time.
        b.store_on_demand("m5.large", Ok(Some(0.096)), t0 + Duration::from_secs(1));
        b.store_failed(&due, t0, t0 + LOOKUP_TIMEOUT);
        let retry = t0 + LOOKUP_TIMEOUT + RETRY_AFTER_FAILURE;
        assert_eq!(b.due([m5_spot()], retry), vec![m5_spot()]);
        assert_eq!(b.quote(&m5_on_demand(), None).dollars, 0.096);
    }
}
