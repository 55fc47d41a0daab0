//! Demand traces: the built-in scenarios and CSV files (`time_s,cpu_cores[,memory_gib]`).

use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Total resources the workload requests from `time_s` on, until the next row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub time_s: i64,
    pub cpu: f64,
    /// GiB; `None` when the trace has no memory column (memory then follows the pods' size).
    pub memory: Option<f64>,
}

/// A demand trace: rows in time order, and when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub rows: Vec<Row>,
    pub end_s: i64,
    /// Pods with a node-local PersistentVolume (K3s's `local-path`) the scenario runs beside
    /// its demand, e.g. database replicas; a CSV trace has none unless `simulate.local_volume_pods` says.
    pub local_volume_pods: u32,
}

impl Trace {
    /// Demand in force at `t` (the last row at or before it).
    pub fn at(&self, t: i64) -> Row {
        let i = self.rows.partition_point(|r| r.time_s <= t);
        self.rows[i.saturating_sub(1)]
    }
}

pub const SCENARIOS: [&str; 6] = [
    "steady",
    "diurnal",
    "flash-sale",
    "ramp",
    "noisy",
    "stateful",
];

const STEP: i64 = 15;
const HOUR: i64 = 3600;

/// A built-in scenario, generated at 15 s resolution from `seed`.
pub fn scenario(name: &str, seed: u64) -> Result<Trace> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // (duration, demand in CPU cores as a function of time and a noise draw in [-1, 1])
    let (duration, shape): (i64, Box<dyn Fn(i64, f64) -> f64>) = match name {
        // A flat service with a little jitter.
        "steady" => (6 * HOUR, Box::new(|_, n| 6.0 + 0.5 * n)),
        // Two days of a business-hours curve: quiet nights, a peak in the afternoon
        // (peak/mean ≈ 2.9, as web traffic commonly shows).
        "diurnal" => (
            48 * HOUR,
            Box::new(|t, n| {
                let day = (t % (24 * HOUR)) as f64 / (24 * HOUR) as f64;
                let wave = (1.0 - (2.0 * std::f64::consts::PI * day).cos()) / 2.0;
                2.0 + 38.0 * wave.powi(3) + 0.5 * n
            }),
        ),
        // Quiet, then a sale: demand jumps tenfold in two minutes, holds an hour, falls back.
        "flash-sale" => (
            12 * HOUR,
            Box::new(|t, n| {
                let (start, ramp, hold) = (3 * HOUR, 120, HOUR);
                let base = 4.0 + 0.3 * n;
                let peak = 40.0 + 1.0 * n;
                if t < start || t >= start + ramp + hold + ramp {
                    base
                } else if t < start + ramp {
                    base + (peak - base) * (t - start) as f64 / ramp as f64
                } else if t < start + ramp + hold {
                    peak
                } else {
                    peak - (peak - base) * (t - start - ramp - hold) as f64 / ramp as f64
                }
            }),
        ),
        // A launch: demand climbs steadily for 4 hours, holds, and eases off.
        "ramp" => (
            8 * HOUR,
            Box::new(|t, n| {
                let h = t as f64 / HOUR as f64;
                let level = if h < 4.0 {
                    2.0 + 8.0 * h
                } else if h < 6.0 {
                    34.0
                } else {
                    34.0 - 16.0 * (h - 6.0)
                };
                level + 0.5 * n
            }),
        ),
        // A bursty service: ±40% swings every few minutes around 16 cores.
        "noisy" => (6 * HOUR, Box::new(|_, n| 16.0 * (1.0 + 0.4 * n))),
        // A day of the business-hours curve beside 8 database replicas on local volumes
        // (below): shrinking the night fleet must not take a node that holds one.
        "stateful" => (
            24 * HOUR,
            Box::new(|t, n| {
                let day = t as f64 / (24 * HOUR) as f64;
                let wave = (1.0 - (2.0 * std::f64::consts::PI * day).cos()) / 2.0;
                2.0 + 30.0 * wave.powi(3) + 0.5 * n
            }),
        ),
        other => {
            return Err(Error::Trace(format!(
                "unknown scenario `{other}`; built in: {}",
                SCENARIOS.join(", ")
            )));
        }
    };
    let mut rows = Vec::new();
    let mut noise = 0.0;
    let mut t = 0;
    while t < duration {
        // Noise changes every 5 minutes so it looks like load, not white noise.
        if t % 300 == 0 {
            noise = rng.random_range(-1.0..=1.0);
        }
        rows.push(Row {
            time_s: t,
            cpu: shape(t, noise).max(0.0),
            memory: None,
        });
        t += STEP;
    }
    Ok(Trace {
        name: name.to_string(),
        rows,
        end_s: duration,
        local_volume_pods: if name == "stateful" { 8 } else { 0 },
    })
}

/// Parses a CSV trace. Errors name the line and what is wrong with it.
pub fn parse_csv(name: &str, text: &str) -> Result<Trace> {
    let err = |line: usize, msg: String| Error::Trace(format!("{name}:{line}: {msg}"));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((hi, header)) = lines.next() else {
        return Err(err(
            1,
            "empty trace; expected header `time_s,cpu_cores`".into(),
        ));
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let with_memory = match cols.as_slice() {
        ["time_s", "cpu_cores"] => false,
        ["time_s", "cpu_cores", "memory_gib"] => true,
        _ => {
            return Err(err(
                hi + 1,
                format!(
                    "bad header `{header}`; expected `time_s,cpu_cores` or `time_s,cpu_cores,memory_gib`"
                ),
            ));
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != cols.len() {
            return Err(err(
                n,
                format!("expected {} values, found {}", cols.len(), fields.len()),
            ));
        }
        let num = |j: usize| -> Result<f64> {
            let v: f64 = fields[j]
                .parse()
                .map_err(|_| err(n, format!("{} `{}` is not a number", cols[j], fields[j])))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(
                    n,
                    format!("{} must be a finite number ≥ 0, got {v}", cols[j]),
                ));
            }
            Ok(v)
        };
        let time_s = num(0)?.round() as i64;
        if let Some(prev) = rows.last()
            && time_s <= prev.time_s
        {
            return Err(err(
                n,
                format!(
                    "time goes backwards or repeats ({time_s} s after {} s); rows must be in increasing time order",
                    prev.time_s
                ),
            ));
        }
        rows.push(Row {
            time_s,
            cpu: num(1)?,
            memory: if with_memory { Some(num(2)?) } else { None },
        });
    }
    let Some(first) = rows.first() else {
        return Err(err(hi + 1, "trace has a header but no rows".into()));
    };
    if first.time_s != 0 {
        rows.insert(
            0,
            Row {
                time_s: 0,
                ..*first
            },
        );
    }
    // The last row holds for one more step so it counts.
    let last = rows.last().map_or(0, |r| r.time_s);
    let step = if rows.len() > 1 {
        last - rows[rows.len() - 2].time_s
    } else {
        60
    };
    Ok(Trace {
        name: name.to_string(),
        rows,
        end_s: last + step,
        local_volume_pods: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<Trace>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn parses_rows_and_holds_values() {
        let t = parse_csv("t.csv", "time_s,cpu_cores\n0,1\n60,4.5\n120,2\n").unwrap();
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.at(90).cpu, 4.5);
        assert_eq!(t.end_s, 180);
    }

    #[test]
    fn memory_column_is_optional() {
        let t = parse_csv("t.csv", "time_s,cpu_cores,memory_gib\n0,1,2\n").unwrap();
        assert_eq!(t.rows[0].memory, Some(2.0));
    }

    #[test]
    fn errors_name_the_line() {
        assert!(msg(parse_csv("t.csv", "time,cpu\n0,1\n")).contains("t.csv:1: bad header"));
        assert!(
            msg(parse_csv("t.csv", "time_s,cpu_cores\n0,1\n60,abc\n"))
                .contains("t.csv:3: cpu_cores `abc` is not a number")
        );
        assert!(
            msg(parse_csv("t.csv", "time_s,cpu_cores\n0,1\n60,2\n30,2\n"))
                .contains("t.csv:4: time goes backwards")
        );
        assert!(msg(parse_csv("t.csv", "time_s,cpu_cores\n0,-1\n")).contains("t.csv:2"));
        assert!(msg(parse_csv("t.csv", "time_s,cpu_cores\n0\n")).contains("expected 2 values"));
    }

    #[test]
    fn scenarios_are_deterministic_per_seed() {
        for s in SCENARIOS {
            assert_eq!(scenario(s, 7).unwrap(), scenario(s, 7).unwrap());
        }
        assert_ne!(scenario("noisy", 1).unwrap(), scenario("noisy", 2).unwrap());
        assert!(scenario("nope", 1).is_err());
    }
}
