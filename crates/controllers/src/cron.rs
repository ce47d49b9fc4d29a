//! Cron schedules as CronJobs write them (the syntax of robfig/cron's standard parser,
//! which Kubernetes uses): five fields (minute hour day-of-month month day-of-week) with
//! `*`, `?`, lists, ranges, steps and names (jan..dec, sun..sat, 7 = Sunday), or one of
//! @yearly @annually @monthly @weekly @daily @midnight @hourly. As in cron, when both
//! day fields are restricted a day matching either runs; when one is `*`, both must match.

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Value of names[0].
    name_base: u32,
}

/// Parses one field into a bit set; the bool says whether it was an unstepped `*`/`?`.
fn field(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (lo, hi, is_star) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else {
            let (a, z) = match range.split_once('-') {
                Some((a, z)) => (value(a, b)?, value(z, b)?),
                None => {
                    let v = value(range, b)?;
                    // "N/step" means "N-max/step".
                    (v, if step.is_some() { b.max } else { v })
                }
            };
            (a, z, false)
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        if lo < b.min {
            return Err(format!(
                "beginning of range ({lo}) below minimum ({}): {part}",
                b.min
            ));
        }
        if hi > b.max {
            return Err(format!(
                "end of range ({hi}) above maximum ({}): {part}",
                b.max
            ));
        }
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part}"
            ));
        }
        star |= is_star && step == 1;
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.name_base);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            ));
        }
        let none: &[&str] = &[];
        let (minutes, _) = field(
            fields[0],
            &Bounds {
                min: 0,
                max: 59,
                names: none,
                name_base: 0,
            },
        )?;
        let (hours, _) = field(
            fields[1],
            &Bounds {
                min: 0,
                max: 23,
                names: none,
                name_base: 0,
            },
        )?;
        let (dom, dom_star) = field(
            fields[2],
            &Bounds {
                min: 1,
                max: 31,
                names: none,
                name_base: 0,
            },
        )?;
        let (months, _) = field(
            fields[3],
            &Bounds {
                min: 1,
                max: 12,
                names: &MONTHS,
                name_base: 1,
            },
        )?;
        let (mut dow, dow_star) = field(
            fields[4],
            &Bounds {
                min: 0,
                max: 7,
                names: &DAYS,
                name_base: 0,
            },
        )?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first activation strictly after `after`, in `tz`; None if there is none within
    /// five years (a schedule like "0 0 30 2 *").
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        // Start at the next whole minute.
        let mut t = DateTime::new(
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
            0,
            0,
        )
        .ok()?
        .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(1))
        .ok()?;
        let limit = start.year() + 5;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = DateTime::new(y, m, 1, 0, 0, 0, 0).ok()?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Default::default());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0)
                    .ok()?
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(1))
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(1))
                    .ok()?;
                continue;
            }
            // A local time skipped by a DST change runs at the first instant after the gap.
            let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if ts > after {
                return Some(ts);
            }
            t = t
                .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(1))
                .ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec)
            .unwrap()
            .next(at(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn parses_fields_names_steps_and_macros() {
        assert!(Schedule::parse("* * * * *").is_ok());
        assert!(Schedule::parse("*/15 0-6,22 1,15 JAN-jun mon-FRI").is_ok());
        assert!(Schedule::parse("@hourly").is_ok());
        assert_eq!(Schedule::parse("@daily"), Schedule::parse("0 0 * * *"));
        assert_eq!(Schedule::parse("0 0 * * 7"), Schedule::parse("0 0 * * 0"));
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("60 * * * *").is_err());
        assert!(Schedule::parse("* 24 * * *").is_err());
        assert!(Schedule::parse("* * 0 * *").is_err());
        assert!(Schedule::parse("5-1 * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
        assert!(Schedule::parse("@often").is_err());
        assert!(Schedule::parse("x * * * *").is_err());
        assert!(Schedule::parse("").is_err());
    }

    #[test]
    fn next_activation() {
        assert_eq!(
            next("* * * * *", "2024-03-01T10:00:30Z"),
            "2024-03-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-03-01T10:00:00Z"),
            "2024-03-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2024-03-01T10:16:00Z"),
            "2024-03-01T10:30:00Z"
        );
        assert_eq!(
            next("@hourly", "2024-03-01T23:30:00Z"),
            "2024-03-02T00:00:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "2024-12-31T03:00:00Z"),
            "2025-01-01T02:30:00Z"
        );
        // Leap day.
        assert_eq!(
            next("0 0 29 2 *", "2023-03-01T00:00:00Z"),
            "2024-02-29T00:00:00Z"
        );
        // Never.
        assert_eq!(next("0 0 30 2 *", "2023-03-01T00:00:00Z"), "");
        // 2024-03-01 is a Friday; next Monday is the 4th.
        assert_eq!(
            next("0 9 * * mon", "2024-03-01T10:00:00Z"),
            "2024-03-04T09:00:00Z"
        );
        // Both day fields restricted: either matches (the 15th, or a Monday).
        assert_eq!(
            next("0 0 15 * 1", "2024-03-01T10:00:00Z"),
            "2024-03-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 15 * 1", "2024-03-11T10:00:00Z"),
            "2024-03-15T00:00:00Z"
        );
        // One is *: both must match (the 1st of a month that is a Sunday).
        assert_eq!(
            next("0 0 1 * */1", "2024-03-01T10:00:00Z"),
            "2024-04-01T00:00:00Z"
        );
        // Both restricted again: a day in 1-7 runs even if not a Sunday.
        assert_eq!(
            next("0 0 1-7 * sun", "2024-03-01T10:00:00Z"),
            "2024-03-02T00:00:00Z"
        );
        assert_eq!(
            next("0 0 1-7 * sun", "2024-03-07T10:00:00Z"),
            "2024-03-10T00:00:00Z"
        );
        // "N/step" is "N-max/step".
        assert_eq!(
            next("50/5 * * * *", "2024-03-01T10:56:00Z"),
            "2024-03-01T11:50:00Z"
        );
        assert_eq!(
            next("@yearly", "2024-03-01T10:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
    }

    #[test]
    fn time_zones() {
        let tz = match TimeZone::get("America/New_York") {
            Ok(tz) => tz,
            // Only a machine without a time zone database may skip this.
            Err(_) if !std::path::Path::new("/usr/share/zoneinfo").exists() => return,
            Err(e) => panic!("time zone database present but unreadable: {e}"),
        };
        let s = Schedule::parse("0 9 * * *").unwrap();
        // 09:00 EST is 14:00 UTC.
        let n = s.next(at("2024-01-10T12:00:00Z"), &tz).unwrap();
        assert_eq!(n.to_string(), "2024-01-10T14:00:00Z");
        // 02:30 does not exist on 2024-03-10 in New York: it runs at 03:30 EDT.
        let s = Schedule::parse("30 2 * * *").unwrap();
        let n = s.next(at("2024-03-10T05:00:00Z"), &tz).unwrap();
        assert_eq!(n.to_string(), "2024-03-10T07:30:00Z");
    }
}
