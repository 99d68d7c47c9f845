//! The local time zone's offset from UTC, when it is one fixed offset (UTC
//! on most servers). sshd reads an `expiry-time` without `Z` as local time.

use std::path::Path;

/// The system zone: `/etc/localtime`, or UTC when there is none (as glibc).
pub fn fixed_utc_offset() -> Option<i64> {
    match std::fs::read(Path::new("/etc/localtime")) {
        Ok(bytes) => tzif_fixed_offset(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// The offset of a TZif file that has no transitions and one local time
/// type; `None` for any other zone or anything malformed.
pub fn tzif_fixed_offset(bytes: &[u8]) -> Option<i64> {
    let counts = |at: usize| -> Option<[usize; 6]> {
        let header = bytes.get(at..at + 44)?;
        if &header[..4] != b"TZif" {
            return None;
        }
        let mut out = [0usize; 6];
        for (i, c) in out.iter_mut().enumerate() {
            let raw = header.get(20 + 4 * i..24 + 4 * i)?;
            *c = u32::from_be_bytes(raw.try_into().ok()?) as usize;
        }
        Some(out)
    };
    // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt.
    let [isut, isstd, leap, time, types, chars] = counts(0)?;
    let (start, time, types, footer) = if bytes.get(4).is_some_and(|v| *v >= b'2') {
        let v1 = time * 5 + types * 6 + chars + leap * 8 + isstd + isut;
        let at = 44 + v1;
        let [isut, isstd, leap, time, types, chars] = counts(at)?;
        let data = at + 44;
        let end = data + time * 9 + types * 6 + chars + leap * 12 + isstd + isut;
        (data, time, types, bytes.get(end..)?)
    } else {
        (44, time, types, &[][..])
    };
    // A footer rule with a comma has daylight saving time to come.
    if time != 0 || types != 1 || footer.contains(&b',') {
        return None;
    }
    let raw = bytes.get(start..start + 4)?;
    Some(i64::from(i32::from_be_bytes(raw.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_zones_have_an_offset_and_others_none() {
        let read = |z: &str| std::fs::read(format!("/usr/share/zoneinfo/{z}")).ok();
        if let Some(utc) = read("Etc/UTC") {
            assert_eq!(tzif_fixed_offset(&utc), Some(0));
        }
        if let Some(plus5) = read("Etc/GMT-5") {
            assert_eq!(tzif_fixed_offset(&plus5), Some(5 * 3600));
        }
        if let Some(berlin) = read("Europe/Berlin") {
            assert_eq!(tzif_fixed_offset(&berlin), None);
        }
        assert_eq!(tzif_fixed_offset(b"TZif"), None);
        assert_eq!(tzif_fixed_offset(b""), None);
    }
}
