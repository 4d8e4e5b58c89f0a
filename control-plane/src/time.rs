//! Time as berthd writes it, without a date library: milliseconds since the epoch (records, events) and
//! UTC calendar formatting (containerd's label values, generated snapshot names).

/// Year, month, day, hour, minute, second (UTC) of `secs` since the Unix epoch (Howard Hinnant's
/// days-to-civil algorithm).
pub fn utc_parts(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Seconds since the epoch of a system time (0 before the epoch).
pub fn epoch_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64
}

/// RFC 3339 UTC timestamp with seconds precision, e.g. `2026-11-22T22:28:04Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let (y, m, d, h, mi, s) = utc_parts(epoch_secs(t));
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `YYYYMMDD-HHMMSS` (UTC).
pub fn compact(secs: i64) -> String {
    let (y, m, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_386_484);
        assert_eq!(super::rfc3339(t), "2026-11-22T22:28:04Z");
        assert_eq!(super::rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(super::compact(1_795_386_484), "20261122-222804");
    }
}
