//! Predictive pre-warming: forecast the CPU the cluster's pods will request one lead time
//! (a boot plus a decision interval) ahead, so nodes are Ready before the pods that need them
//! exist.
//!
//! The method, in full (README "Forecast"):
//! - **History**: the most CPU requested at once (scheduled plus pending pods, DaemonSets
//!   apart) in each 5-minute bucket, for the last 8 days; it lives in the policy's memory and
//!   so in the DynamoDB state record. It holds only what was observed: the twin's forecast
//!   sees only the past of its trace.
//! - **Seasonal rise**: for each seasonal lag with history (1 day, and 7 days once a week is
//!   recorded), the rise that followed the same moment then: the highest bucket from the
//!   lagged *now* to the lagged *now + lead*, minus the lagged *now* bucket. Both lags: their
//!   mean. It never predicts a fall: the reactive rules scale down.
//! - **Trend rise**: the slope of the last two completed buckets' peaks, when rising, times
//!   the lead.
//! - **Forecast** = demand now + the larger of the two rises.
//! - **Margin**: every forecast is also checked against what came: the 90th percentile of
//!   how far demand went above it over the last 2 hours of windows is kept free on top, for
//!   what no forecast sees (noise, one-off bursts).
//! - **Back-off**: each predicted rise is scored at the end of the last bucket it looked at:
//!   it came true if demand rose by at least half of it by then. The forecast is acted on only while at least half of
//!   its last 6 scored rises came true; wrong ones keep being made and scored, so it resumes
//!   by itself when the demand's pattern returns.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// History resolution.
pub const BUCKET_S: i64 = 300;
const DAY_S: i64 = 86_400;
const LAGS_S: [i64; 2] = [DAY_S, 7 * DAY_S];
/// A week and a day of buckets: the weekly lag plus a day of lead.
const KEEP_BUCKETS: usize = (8 * DAY_S / BUCKET_S) as usize;
/// Scored rises remembered for the back-off.
const SCORED: usize = 6;
/// Forecast errors remembered for the margin: two hours of 5-minute windows.
const ERRORS: usize = 24;
/// Rises smaller than this (cores) are noise, neither acted on nor scored.
const MIN_RISE: f64 = 0.05;

/// `policy.forecast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    pub enabled: bool,
    /// How far ahead to forecast: a node's boot time plus one decision interval.
    pub lead: Duration,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            enabled: false,
            lead: Duration::from_secs(120),
        }
    }
}

/// A predicted rise waiting for its window to end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// When the window ends (unix seconds).
    pub due: i64,
    /// Demand when it was predicted, and the rise predicted (cores; 0 when none).
    pub base: f64,
    pub rise: f64,
    /// The most demand seen since.
    pub seen: f64,
}

/// What the forecast remembers between decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandHistory {
    /// Bucket number (unix seconds / `BUCKET_S`) of `peaks[0]`.
    pub first: i64,
    /// The most CPU (cores) requested at once per bucket; `None` where nothing was observed.
    pub peaks: VecDeque<Option<f32>>,
    #[serde(default)]
    pub open: Option<Open>,
    /// Outcomes of the last scored rises, oldest first (`true`: it came true).
    #[serde(default)]
    pub scored: VecDeque<bool>,
    /// How far demand went above the forecast in each of the last windows (cores, oldest
    /// first; negative: it stayed below).
    #[serde(default)]
    pub errors: VecDeque<f32>,
}

/// One forecast, with the parts a reader needs to check it.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Demand now (cores).
    pub now: f64,
    /// The seasonal rise (`None`: less than a day of history at the lagged time).
    pub seasonal: Option<f64>,
    pub trend: f64,
    /// Whether the back-off lets it act.
    pub trusted: bool,
    /// Room kept on top for what the forecast does not see: the 90th percentile of how far
    /// demand went above it in recent windows.
    pub margin: f64,
}

impl Forecast {
    /// The predicted rise.
    pub fn rise(&self) -> f64 {
        self.seasonal.unwrap_or(0.0).max(self.trend)
    }
    pub fn demand(&self) -> f64 {
        self.now + self.rise()
    }
    /// Free CPU to have within the lead: the rise when trusted, plus the margin.
    pub fn room_needed(&self) -> f64 {
        (if self.trusted { self.rise() } else { 0.0 }) + self.margin
    }
}

fn bucket(t: i64) -> i64 {
    t.div_euclid(BUCKET_S)
}

/// The end of the last bucket a forecast made at `now` looks at.
pub fn window_end(now: i64, lead: Duration) -> i64 {
    (bucket(now + lead.as_secs() as i64) + 1) * BUCKET_S
}

impl DemandHistory {
    fn peak(&self, b: i64) -> Option<f64> {
        let i = usize::try_from(b - self.first).ok()?;
        self.peaks.get(i).copied().flatten().map(f64::from)
    }

    /// Records the demand observed at `now` and scores a predicted rise whose window ended.
    /// A time before the newest bucket (a clock step back) changes nothing.
    pub fn record(&mut self, now: i64, cpu: f64) {
        let b = bucket(now);
        if self.peaks.is_empty() {
            self.first = b;
        }
        let last = self.first + self.peaks.len() as i64 - 1;
        if b < last {
            return;
        }
        if b > last {
            // Gaps (the controller was down) stay unknown; a long gap restarts the history.
            let gap = (b - last) as usize;
            if gap > KEEP_BUCKETS {
                self.peaks.clear();
                self.first = b;
                self.peaks.push_back(None);
            } else {
                self.peaks.extend(std::iter::repeat_n(None, gap));
            }
        }
        if let Some(slot) = self.peaks.back_mut() {
            *slot = Some(slot.map_or(cpu as f32, |p| p.max(cpu as f32)));
        }
        while self.peaks.len() > KEEP_BUCKETS {
            self.peaks.pop_front();
            self.first += 1;
        }
        if let Some(open) = &mut self.open {
            open.seen = open.seen.max(cpu);
            if now >= open.due {
                if open.rise >= MIN_RISE {
                    let came_true = open.seen - open.base >= open.rise / 2.0;
                    self.scored.push_back(came_true);
                    while self.scored.len() > SCORED {
                        self.scored.pop_front();
                    }
                }
                self.errors
                    .push_back((open.seen - open.base - open.rise) as f32);
                while self.errors.len() > ERRORS {
                    self.errors.pop_front();
                }
                self.open = None;
            }
        }
    }

    /// The 90th percentile (nearest rank) of recent under-forecasts, 0 when it was never under.
    pub fn margin(&self) -> f64 {
        let mut under: Vec<f64> = self.errors.iter().map(|e| f64::from(*e).max(0.0)).collect();
        if under.is_empty() {
            return 0.0;
        }
        under.sort_by(f64::total_cmp);
        let rank = (0.9 * under.len() as f64).ceil() as usize;
        under[rank.clamp(1, under.len()) - 1]
    }

    /// At least half of the last scored rises came true (or too few are scored to judge).
    pub fn trusted(&self) -> bool {
        let hits = self.scored.iter().filter(|h| **h).count();
        self.scored.len() < 3 || hits * 2 >= self.scored.len()
    }

    /// The forecast for `[now, now + lead]`, from the history recorded so far.
    pub fn forecast(&self, now: i64, demand: f64, lead: Duration) -> Forecast {
        let (k, until) = (bucket(now), bucket(now + lead.as_secs() as i64));
        let rises: Vec<f64> = LAGS_S
            .iter()
            .filter_map(|lag| {
                let lb = lag / BUCKET_S;
                let base = self.peak(k - lb)?;
                let ahead = (k..=until)
                    .filter_map(|b| self.peak(b - lb))
                    .fold(base, f64::max);
                Some(ahead - base)
            })
            .collect();
        let seasonal = (!rises.is_empty()).then(|| rises.iter().sum::<f64>() / rises.len() as f64);
        let trend = match (self.peak(k - 2), self.peak(k - 1)) {
            (Some(a), Some(b)) if b > a => (b - a) / BUCKET_S as f64 * lead.as_secs_f64(),
            _ => 0.0,
        };
        Forecast {
            now: demand,
            seasonal,
            trend,
            trusted: self.trusted(),
            margin: self.margin(),
        }
    }

    /// Remembers a forecast to score it when its window ends (one at a time: the decisions
    /// inside one window predict the same). The window runs to the end of the last bucket the
    /// forecast looked at: the rise was that bucket's peak.
    pub fn predicted(&mut self, now: i64, f: &Forecast, lead: Duration) {
        if self.open.is_none() {
            self.open = Some(Open {
                due: window_end(now, lead),
                base: f.now,
                rise: f.rise(),
                seen: f.now,
            });
        }
    }
}

/// Whether room is worth acting on.
pub fn significant(cores: f64) -> bool {
    cores >= MIN_RISE
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAD: Duration = Duration::from_secs(120);

    /// Records `cpu(t)` every 30 s from `from` to `to`.
    fn replay(h: &mut DemandHistory, from: i64, to: i64, cpu: impl Fn(i64) -> f64) {
        let mut t = from;
        while t < to {
            h.record(t, cpu(t));
            t += 30;
        }
    }

    /// A day that is 4 cores, except 10 cores from 09:00 to 10:00.
    fn workday(t: i64) -> f64 {
        let s = t.rem_euclid(DAY_S);
        if (9 * 3600..10 * 3600).contains(&s) {
            10.0
        } else {
            4.0
        }
    }

    #[test]
    fn a_daily_step_is_forecast_one_lead_ahead_from_yesterday() {
        let mut h = DemandHistory::default();
        replay(&mut h, 0, DAY_S + 9 * 3600 - 120, workday);
        // Day 2, 08:58:00: the window [08:58, 09:00] ends in the bucket where yesterday rose
        // from 4 to 10: a rise of 6 on top of today's 4.
        let now = DAY_S + 9 * 3600 - 120;
        let f = h.forecast(now, 4.0, LEAD);
        assert_eq!(f.seasonal, Some(6.0));
        assert_eq!(f.trend, 0.0);
        assert_eq!(f.demand(), 10.0);
        // Ten minutes earlier the window stays inside a flat bucket: no rise.
        let f = h.forecast(now - 600, 4.0, LEAD);
        assert_eq!(f.seasonal, Some(0.0));
        assert_eq!(f.demand(), 4.0);
        // Before 10:00 yesterday fell: a forecast never predicts a fall.
        let mut h2 = h.clone();
        replay(&mut h2, now, DAY_S + 10 * 3600 - 120, workday);
        let f = h2.forecast(DAY_S + 10 * 3600 - 120, 10.0, LEAD);
        assert_eq!(f.rise(), 0.0);
    }

    #[test]
    fn today_s_level_carries_yesterday_s_rise() {
        let mut h = DemandHistory::default();
        replay(&mut h, 0, DAY_S + 9 * 3600 - 120, |t| {
            // Today runs 2 cores above yesterday.
            workday(t) + if t >= DAY_S { 2.0 } else { 0.0 }
        });
        let f = h.forecast(DAY_S + 9 * 3600 - 120, 6.0, LEAD);
        assert_eq!(f.demand(), 12.0, "today's 6 plus yesterday's rise of 6");
    }

    #[test]
    fn with_a_week_of_history_the_daily_and_weekly_rises_are_averaged() {
        // Weekdays rise by 6 at 09:00, the weekend (days 5 and 6) does not.
        let week = |t: i64| {
            if (5..7).contains(&(t / DAY_S % 7)) {
                4.0
            } else {
                workday(t)
            }
        };
        let mut h = DemandHistory::default();
        let now = 7 * DAY_S + 9 * 3600 - 120; // day 7, a weekday after a Sunday
        replay(&mut h, 0, now, week);
        let f = h.forecast(now, 4.0, LEAD);
        // Yesterday (day 6, weekend): no rise; a week ago (day 0): 6. Mean: 3.
        assert_eq!(f.seasonal, Some(3.0));
    }

    #[test]
    fn without_a_day_of_history_only_the_trend_speaks() {
        let mut h = DemandHistory::default();
        // Rising by 1 core per 5 minutes.
        replay(&mut h, 0, 3600, |t| 2.0 + (t / BUCKET_S) as f64);
        let f = h.forecast(3600, 14.0, LEAD);
        assert_eq!(f.seasonal, None);
        // 1 core per 300 s over a 120 s lead.
        assert!((f.trend - 0.4).abs() < 1e-9, "{}", f.trend);
        assert!((f.demand() - 14.4).abs() < 1e-9);
    }

    #[test]
    fn a_forecast_that_keeps_being_wrong_backs_itself_off_and_resumes_when_right() {
        let mut h = DemandHistory::default();
        let lead = LEAD;
        let mut t = 0;
        let predict = |h: &mut DemandHistory, t: &mut i64, actual: f64| {
            let f = Forecast {
                now: 4.0,
                seasonal: Some(6.0),
                trend: 0.0,
                trusted: h.trusted(),
                margin: 0.0,
            };
            h.predicted(*t, &f, lead);
            h.record(*t + 60, actual);
            h.record(*t + 300, actual);
            *t += 600;
        };
        for _ in 0..3 {
            assert!(h.trusted());
            predict(&mut h, &mut t, 4.5); // rose by 0.5 of a predicted 6: wrong
        }
        assert!(!h.trusted(), "three wrong of three: backed off");
        predict(&mut h, &mut t, 10.0);
        predict(&mut h, &mut t, 7.0); // a rise of 3 is half of 6: came true
        assert!(!h.trusted(), "2 of 5 came true");
        predict(&mut h, &mut t, 10.0);
        assert!(h.trusted(), "3 of 6 came true");
    }

    #[test]
    fn the_history_keeps_eight_days_and_survives_gaps_and_clock_steps() {
        let mut h = DemandHistory::default();
        replay(&mut h, 0, 9 * DAY_S, |_| 3.0);
        assert_eq!(h.peaks.len(), KEEP_BUCKETS);
        assert_eq!(h.first, 9 * DAY_S / BUCKET_S - KEEP_BUCKETS as i64);
        // The controller was down for an hour: those buckets are unknown, not zero.
        h.record(9 * DAY_S + 3600, 5.0);
        assert_eq!(h.peak(bucket(9 * DAY_S + 1800)), None);
        assert_eq!(h.peak(bucket(9 * DAY_S + 3600)), Some(5.0));
        // A clock stepping back changes nothing.
        let before = h.clone();
        h.record(9 * DAY_S, 50.0);
        assert_eq!(h, before);
        // JSON round trip (the state record stores it so).
        let json = serde_json::to_string(&h).expect("serialises");
        let back: DemandHistory = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, h);
        assert!(json.len() < 40_000, "{} bytes", json.len());
    }
}
