//! Human-readable ages: Kubernetes' `duration.HumanDuration` and `translateTimestampSince`.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

/// What Kubernetes prints for a timestamp that is missing (Go's zero `metav1.Time`).
pub const UNKNOWN: &str = "<unknown>";

/// Parses an RFC 3339 timestamp as the API serves it (`2024-05-01T12:00:00Z`, optionally with
/// fractional seconds for `MicroTime`). Go's zero time (`0001-01-01T00:00:00Z`) counts as absent,
/// because `metav1.Time.IsZero()` is what the printers test.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .ok()?
        .with_timezone(&Utc);
    if t == go_zero_time() {
        return None;
    }
    Some(t)
}

fn go_zero_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `translateTimestampSince`: the age of `created` at `now`, or `<unknown>` when the timestamp is
/// missing or unparseable.
pub fn human_age(created: &str, now: DateTime<Utc>) -> String {
    match parse_time(created) {
        Some(t) => human_duration(now - t),
        None => UNKNOWN.to_string(),
    }
}

/// Like [`human_age`] but for an optional JSON string field.
pub(crate) fn since(ts: Option<&str>, now: DateTime<Utc>) -> String {
    human_age(ts.unwrap_or(""), now)
}

/// Go's `time.Duration` is an int64 of nanoseconds and `Time.Sub` saturates, so clamp the same way
/// (this only matters for timestamps centuries apart, which print as "292y" in Go too).
fn go_nanos(d: TimeDelta) -> i64 {
    let nanos = i128::from(d.num_seconds()) * 1_000_000_000 + i128::from(d.subsec_nanos());
    nanos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `duration.HumanDuration`: a succinct duration with two or three significant figures
/// ("45s", "3m2s", "15m", "4h10m", "12h", "2d3h", "30d", "2y45d", "9y").
pub fn human_duration(d: TimeDelta) -> String {
    const SEC: i64 = 1_000_000_000;
    let nanos = go_nanos(d);
    // Go truncates toward zero (`int(d.Seconds())`); up to a second of clock skew reads as "0s".
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * SEC);
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * SEC);
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        format!("{hours}h{m}m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        format!("{}d{}h", hours / 24, h)
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        format!("{}y{}d", hours / 24 / 365, dy)
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> String {
        human_duration(TimeDelta::seconds(s))
    }

    #[test]
    fn seconds_up_to_two_minutes() {
        assert_eq!(secs(0), "0s");
        assert_eq!(secs(5), "5s");
        assert_eq!(secs(119), "119s");
        assert_eq!(secs(120), "2m");
    }

    #[test]
    fn clock_skew_tolerance() {
        assert_eq!(human_duration(TimeDelta::milliseconds(-1500)), "0s");
        assert_eq!(secs(-1), "0s");
        assert_eq!(secs(-2), "<invalid>");
    }

    #[test]
    fn minutes_with_seconds_below_ten_minutes() {
        assert_eq!(secs(3 * 60 + 2), "3m2s");
        assert_eq!(secs(9 * 60 + 59), "9m59s");
        assert_eq!(secs(5 * 60), "5m");
        assert_eq!(secs(10 * 60 + 30), "10m");
        assert_eq!(secs(179 * 60 + 59), "179m");
    }

    #[test]
    fn hours() {
        assert_eq!(secs(3 * 3600), "3h");
        assert_eq!(secs(4 * 3600 + 10 * 60), "4h10m");
        assert_eq!(secs(7 * 3600 + 59 * 60), "7h59m");
        assert_eq!(secs(8 * 3600 + 59 * 60), "8h");
        assert_eq!(secs(47 * 3600 + 59 * 60), "47h");
    }

    #[test]
    fn days_and_years() {
        let day = 86_400;
        assert_eq!(secs(2 * day), "2d");
        assert_eq!(secs(2 * day + 3 * 3600), "2d3h");
        assert_eq!(secs(7 * day + 23 * 3600), "7d23h");
        assert_eq!(secs(8 * day), "8d");
        assert_eq!(secs(12 * day + 5 * 3600), "12d");
        assert_eq!(secs(729 * day), "729d");
        assert_eq!(secs(730 * day), "2y");
        assert_eq!(secs(3 * 365 * day + 45 * day), "3y45d");
        assert_eq!(secs(8 * 365 * day), "8y");
        assert_eq!(secs(20 * 365 * day + 100 * day), "20y");
    }

    #[test]
    fn ages_from_timestamps() {
        let now = parse_time("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(human_age("2024-05-01T11:59:55Z", now), "5s");
        assert_eq!(human_age("2024-05-01T11:56:58Z", now), "3m2s");
        assert_eq!(human_age("2024-04-29T09:00:00Z", now), "2d3h");
        assert_eq!(human_age("2024-05-01T11:59:59.250000Z", now), "0s");
        assert_eq!(human_age("", now), "<unknown>");
        assert_eq!(human_age("not a time", now), "<unknown>");
        assert_eq!(human_age("0001-01-01T00:00:00Z", now), "<unknown>");
        // A creation time in the future by more than the skew allowance.
        assert_eq!(human_age("2024-05-01T12:00:05Z", now), "<invalid>");
    }
}
