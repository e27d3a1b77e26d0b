//! Retry policy for the speech endpoint: which failures deserve another attempt and how
//! long to wait first (exponential backoff with full jitter, or what the server asked for).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::HeaderMap;

/// Whether an HTTP error status is worth another attempt.
///
/// 400/401/403/404/422 describe the request or the account and never change on retry, so
/// they are final even if the server says otherwise. For the rest, `x-should-retry` (as
/// honoured by OpenAI's SDKs) decides when present; otherwise 408/409/429/5xx are retried.
pub(crate) fn status_is_retryable(status: u16, should_retry: Option<bool>) -> bool {
    if matches!(status, 400 | 401 | 403 | 404 | 422) {
        return false;
    }
    if let Some(decided) = should_retry {
        return decided;
    }
    matches!(status, 408 | 409 | 429) || (500..600).contains(&status)
}

/// The `x-should-retry` header as a boolean, if present and readable.
pub(crate) fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The wait the server asked for: `retry-after-ms` first, then `Retry-After` (seconds or an
/// HTTP date). `None` when neither is present or readable.
pub(crate) fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if let Some(wait) = secs_to_duration(ms / 1000.0) {
            return Some(wait);
        }
    }
    let value = headers.get("retry-after")?.to_str().ok()?;
    parse_retry_after(value, now)
}

/// Parses a `Retry-After` value: delta seconds (fractions tolerated) or an IMF-fixdate.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let at = parse_http_date(value)?;
    // A date in the past means "now".
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date form servers
/// are allowed to send today. The obsolete forms are not worth the code: an unreadable
/// date just falls back to computed backoff.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.trim().split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The upper bound of the wait after `failures` failed attempts: base·2^(failures−1),
/// capped at `max`.
pub(crate) fn backoff_ceiling(failures: u32, base: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(max)
}

/// Whether another attempt fits before `deadline` (counted from the first request): after
/// `elapsed`, waiting `wait` and then allowing the attempt its whole `attempt_budget`.
/// An attempt that could not finish in time is not started.
pub(crate) fn fits(
    elapsed: Duration,
    wait: Duration,
    attempt_budget: Duration,
    deadline: Duration,
) -> bool {
    elapsed.saturating_add(wait).saturating_add(attempt_budget) <= deadline
}

/// Full jitter: a uniformly random wait in `0..=ceiling`, so clients that failed together
/// do not retry together.
pub(crate) fn jittered(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn client_errors_about_the_request_are_never_retried_even_if_the_server_says_so() {
        for status in [400, 401, 403, 404, 422] {
            assert!(!status_is_retryable(status, None), "{status}");
            assert!(!status_is_retryable(status, Some(true)), "{status}");
        }
    }

    #[test]
    fn transient_statuses_are_retried_unless_the_server_says_not_to() {
        for status in [408, 409, 429, 500, 502, 503, 504] {
            assert!(status_is_retryable(status, None), "{status}");
            assert!(!status_is_retryable(status, Some(false)), "{status}");
        }
        assert!(!status_is_retryable(418, None));
        assert!(status_is_retryable(418, Some(true)));
    }

    #[test]
    fn should_retry_header_is_read_case_insensitively() {
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "True")])),
            Some(true)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "maybe")])),
            None
        );
        assert_eq!(should_retry_header(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "20")]);
        assert_eq!(
            server_wait(&h, SystemTime::now()),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        // A date already past means retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now),
            None
        );
    }

    #[test]
    fn http_dates_convert_to_the_right_instant() {
        let t = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(t, UNIX_EPOCH);
        // Leap day in a leap year divisible by 400.
        let t = parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 951_825_600);
    }

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let base = Duration::from_millis(250);
        let max = Duration::from_secs(8);
        let ceilings: Vec<u128> = (1..=8)
            .map(|n| backoff_ceiling(n, base, max).as_millis())
            .collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff_ceiling(u32::MAX, base, max), max);
    }

    #[test]
    fn a_retry_is_made_only_when_its_whole_timeout_fits_the_deadline() {
        let s = Duration::from_secs;
        // Defaults: a quick failure leaves room for a full 15 s attempt, a hang does not.
        assert!(fits(Duration::from_millis(300), s(1), s(15), s(20)));
        assert!(!fits(s(15), Duration::ZERO, s(15), s(20)));
        assert!(fits(s(5), Duration::ZERO, s(15), s(20)));
        assert!(!fits(s(4), s(2), s(15), s(20)));
        assert!(!fits(Duration::MAX, s(1), s(1), s(20)));
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let mut rng = rand::rng();
        let ceiling = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..64).map(|_| jittered(ceiling, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        assert!(waits.iter().any(|w| *w != waits[0]), "jitter must vary");
        assert_eq!(jittered(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
