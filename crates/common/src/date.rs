//! Dates for mail headers (RFC 5322 §3.3), always in UTC, without a time zone database.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

struct Parts {
    wday: &'static str,
    day: u32,
    mon: &'static str,
    year: i64,
    h: u64,
    m: u64,
    s: u64,
}

fn parts(secs: u64) -> Parts {
    let days = (secs / 86_400) as i64;
    let (year, mon, day) = civil_from_days(days);
    let rem = secs % 86_400;
    Parts {
        wday: DAYS[(days.rem_euclid(7)) as usize],
        day,
        mon: MONTHS[(mon - 1) as usize],
        year,
        h: rem / 3600,
        m: rem / 60 % 60,
        s: rem % 60,
    }
}

/// "Fri, 27 Nov 2026 19:30:17 +0000"
pub fn rfc5322(secs: u64) -> String {
    let p = parts(secs);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        p.wday, p.day, p.mon, p.year, p.h, p.m, p.s
    )
}

/// The date of an mbox From_ line (asctime format): "Fri Nov 27 19:30:17 2026"
pub fn asctime(secs: u64) -> String {
    let p = parts(secs);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        p.wday, p.mon, p.day, p.h, p.m, p.s, p.year
    )
}

/// "2026-11-27T19:30:17Z", for logs and listings.
pub fn iso(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, mo, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A short age: "45s", "12m", "3h", "2d".
pub fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_795_808_217), "Fri, 27 Nov 2026 19:36:57 +0000");
        assert_eq!(asctime(1_795_808_217), "Fri Nov 27 19:36:57 2026");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(age(7200), "2h");
    }
}
