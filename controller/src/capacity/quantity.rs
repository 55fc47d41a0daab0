//! Kubernetes resource quantities, exactly: `2`, `1500m`, `4Gi`, `1.5G`, `1e3`, `100Mi`.
//!
//! The scheduler compares integers (`MilliValue()` for CPU, `Value()` for everything else, both
//! rounded up), so the model does too: a float would let `0.1 + 0.2` cores pass where the
//! scheduler says "Insufficient cpu".

use crate::{Error, Result};

/// `q` × 10^`exp10`, rounded up to an integer (`exp10` 3 gives milli-units, 0 whole units).
pub fn scaled(q: &str, exp10: i32) -> Result<i64> {
    parse(q, exp10).ok_or_else(|| Error::Capacity(format!("quantity {q:?} is not valid")))
}

/// Milli-units (CPU), rounded up like `Quantity.MilliValue()`.
pub fn milli(q: &str) -> Result<i64> {
    scaled(q, 3)
}

/// Whole units (bytes, counts), rounded up like `Quantity.Value()`.
pub fn units(q: &str) -> Result<i64> {
    scaled(q, 0)
}

fn parse(q: &str, exp10: i32) -> Option<i64> {
    let q = q.trim();
    let (q, negative) = match q.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (q.strip_prefix('+').unwrap_or(q), false),
    };
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    // Digits of the integer and fraction parts as one integer, without allocating.
    let mut mantissa: i128 = 0;
    let mut significant = 0;
    let mut frac_digits: i32 = 0;
    let mut seen_dot = false;
    let mut seen_digit = false;
    for b in number.bytes() {
        if b == b'.' {
            if seen_dot {
                return None;
            }
            seen_dot = true;
            continue;
        }
        seen_digit = true;
        if seen_dot {
            frac_digits += 1;
        }
        if mantissa != 0 || b != b'0' {
            significant += 1;
            if significant > 30 {
                return None;
            }
        }
        mantissa = mantissa * 10 + i128::from(b - b'0');
    }
    if !seen_digit {
        return None;
    }
    let mut exp: i32 = -frac_digits + exp10;
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp -= 9,
        "u" => exp -= 6,
        "m" => exp -= 3,
        "k" => exp += 3,
        "M" => exp += 6,
        "G" => exp += 9,
        "T" => exp += 12,
        "P" => exp += 15,
        "E" => exp += 18,
        "Ki" => binary = 1,
        "Mi" => binary = 2,
        "Gi" => binary = 3,
        "Ti" => binary = 4,
        "Pi" => binary = 5,
        "Ei" => binary = 6,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().ok()?;
            if !(-40..=40).contains(&e) {
                return None;
            }
            exp += e;
        }
        _ => return None,
    }
    if mantissa == 0 {
        return Some(0);
    }
    if negative {
        return None;
    }
    let mut value = mantissa.checked_mul(1i128.checked_shl(10 * binary)?)?;
    if exp >= 0 {
        value = value.checked_mul(10i128.checked_pow(exp as u32)?)?;
    } else {
        let div = 10i128.checked_pow((-exp) as u32)?;
        value = (value + div - 1) / div;
    }
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_milli_rounded_up() {
        assert_eq!(milli("2").unwrap(), 2000);
        assert_eq!(milli("1500m").unwrap(), 1500);
        assert_eq!(milli("0.1").unwrap(), 100);
        // Quantity.MilliValue() rounds up: 1.0001 cores is 1001m.
        assert_eq!(milli("1.0001").unwrap(), 1001);
        assert_eq!(milli("100u").unwrap(), 1);
        assert_eq!(milli("0").unwrap(), 0);
    }

    #[test]
    fn memory_units_binary_and_decimal() {
        assert_eq!(units("4Gi").unwrap(), 4 << 30);
        assert_eq!(units("512Mi").unwrap(), 512 << 20);
        assert_eq!(units("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(units("1G").unwrap(), 1_000_000_000);
        assert_eq!(units("1e3").unwrap(), 1000);
        assert_eq!(units("128974848").unwrap(), 128_974_848);
        assert_eq!(units("1k").unwrap(), 1000);
        // Value() rounds up too: 1500m of a count is 2.
        assert_eq!(units("1500m").unwrap(), 2);
    }

    #[test]
    fn rejects_what_the_api_would_reject() {
        for bad in ["", "lots", "1.2.3", "-1", "1Qi", "1e999", "."] {
            assert!(units(bad).is_err(), "{bad}");
        }
    }
}
