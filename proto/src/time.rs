//! The one timestamp text both services write: RFC 3339, UTC, always six
//! fractional digits (`2026-11-25T10:04:05.123456Z`). The gateway shows it
//! in every JSON body, and chat-core hashes it into transcripts, so the two
//! must agree to the byte.

use std::fmt::Write;

use prost_types::Timestamp;

/// `timestamp` as RFC 3339 text (microseconds; finer digits are dropped).
pub fn rfc3339(timestamp: &Timestamp) -> String {
    let mut out = String::with_capacity(27);
    write_rfc3339(&mut out, timestamp);
    out
}

/// Microseconds since the Unix epoch as RFC 3339 text.
pub fn rfc3339_micros(unix_micros: i64) -> String {
    rfc3339(&Timestamp {
        seconds: unix_micros.div_euclid(1_000_000),
        nanos: (unix_micros.rem_euclid(1_000_000) * 1_000) as i32,
    })
}

/// Appends `timestamp` as RFC 3339 text to `out`.
pub fn write_rfc3339(out: &mut String, timestamp: &Timestamp) {
    let seconds = timestamp.seconds;
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        timestamp.nanos / 1_000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_microseconds_in_utc() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_521_845_123_456),
            "2026-11-24T12:04:05.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }
}
