//! A guest's limits: when access ends (`expires`), which client addresses
//! may log in (`from`), and whether forwarding is allowed (`forwarding`).
//!
//! They travel on the guest's key lines as sshd options, written by
//! [`Limits::options`] and read back by [`Limits::from_options`], so the
//! snapshot carries them and sshd enforces them too; the key lookup, the
//! PAM hook and the daemon check them again. Pure: the time and the client
//! address are parameters.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::grant::civil;

/// Most entries a `from` list may have.
pub const MAX_FROM: usize = 64;
/// The years an `expires` may fall in.
pub const YEARS: std::ops::RangeInclusive<i64> = 1970..=9999;

/// An address or a network: `192.0.2.7`, `203.0.113.0/24`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn width(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Whether `ip` is in this network. An IPv4 address sshd saw as
    /// IPv4-mapped IPv6 counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, n, width) = match (ip, self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(n)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
            _ => return false,
        };
        let host = u32::from(width - self.prefix);
        let mask = u128::MAX.checked_shl(host).unwrap_or(0);
        a & mask == n & mask
    }
}

impl FromStr for Network {
    type Err = String;

    /// Strict: an address in its plain form, optionally `/` and a prefix
    /// length in decimal without leading zeros, and no host bits set.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{s:?} is not an IPv4 or IPv6 address or network (e.g. 203.0.113.0/24, 2001:db8::/32)")
        })?;
        if addr_text.contains('%') {
            return Err(format!("{s:?}: zone indexes are not allowed"));
        }
        let width = Network::width(addr);
        let prefix = match prefix_text {
            None => width,
            Some(p) => {
                let digits = !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'));
                match p.parse::<u8>() {
                    Ok(n) if digits && n <= width => n,
                    _ => {
                        return Err(format!(
                            "{s:?}: the prefix length must be a number from 0 to {width}"
                        ))
                    }
                }
            }
        };
        let net = Network { addr, prefix };
        if !net.contains(addr) || net.masked() != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                Network {
                    addr: net.masked(),
                    prefix
                }
            ));
        }
        Ok(net)
    }
}

impl Network {
    /// The address with its host bits cleared.
    fn masked(&self) -> IpAddr {
        let host = u32::from(Network::width(self.addr) - self.prefix);
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(host).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(host).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == Network::width(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// What limits one guest's access beyond its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Access ends at this instant (seconds since the epoch).
    pub expires: Option<i64>,
    /// Only clients from these networks may log in; `None`: any.
    pub from: Option<Vec<Network>>,
    /// Port, agent and X11 forwarding and `~/.ssh/rc` allowed.
    pub forwarding: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            expires: None,
            from: None,
            forwarding: true,
        }
    }
}

/// Why a limit refuses a login or ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// The deadline has passed.
    Expired(i64),
    /// The client address is not in `from` (or is unknown).
    Address(Option<IpAddr>),
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::Expired(at) => write!(f, "access expired at {}", civil::utc(*at)),
            Breach::Address(Some(ip)) => {
                write!(f, "client address {ip} is not in the guest's `from`")
            }
            Breach::Address(None) => {
                write!(
                    f,
                    "the client address is unknown and the guest has a `from` list"
                )
            }
        }
    }
}

const EXPIRY: &str = "expiry-time=\"";
const FROM: &str = "from=\"";
const NO_FORWARDING: &str = "restrict,pty";

impl Limits {
    /// Whether access has ended at `now` (seconds since the epoch).
    pub fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// The allowed client networks as text; `None`: any address.
    pub fn from_texts(&self) -> Option<Vec<String>> {
        self.from
            .as_ref()
            .map(|nets| nets.iter().map(ToString::to_string).collect())
    }

    /// Whether a client at `ip` may log in (`None`: unknown).
    pub fn admits_address(&self, ip: Option<IpAddr>) -> bool {
        match &self.from {
            None => true,
            Some(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
        }
    }

    /// `Ok` if a login from `ip` at `now` is within the limits.
    pub fn check(&self, now: i64, ip: Option<IpAddr>) -> Result<(), Breach> {
        if let Some(at) = self.expires.filter(|_| self.expired(now)) {
            return Err(Breach::Expired(at));
        }
        if !self.admits_address(ip) {
            return Err(Breach::Address(ip));
        }
        Ok(())
    }

    /// The sshd options that say the same, in a fixed order (empty when
    /// nothing is limited): `expiry-time="YYYYMMDDHHMMSSZ"`, `from="…"`,
    /// `restrict,pty`. No blanks: the options are one word of the line.
    pub fn options(&self) -> String {
        let mut parts = Vec::new();
        if let Some(at) = self.expires {
            let [y, m, d, hh, mm, ss] = civil::fields(at);
            parts.push(format!(
                "{EXPIRY}{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}Z\""
            ));
        }
        if let Some(nets) = &self.from {
            let list: Vec<String> = nets.iter().map(Network::to_string).collect();
            parts.push(format!("{FROM}{}\"", list.join(",")));
        }
        if !self.forwarding {
            parts.push(NO_FORWARDING.to_string());
        }
        parts.join(",")
    }

    /// Reads back what [`Limits::options`] wrote; `None` for anything else.
    pub fn from_options(opts: &str) -> Option<Limits> {
        let mut limits = Limits::default();
        if opts.is_empty() {
            return Some(limits);
        }
        let mut items = split_options(opts)?.into_iter().peekable();
        if let Some(time) = items.peek().and_then(|i| quoted(i, EXPIRY)) {
            limits.expires = Some(parse_sshd_time(time)?);
            items.next();
        }
        if let Some(list) = items.peek().and_then(|i| quoted(i, FROM)) {
            let nets = list
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<Network>, _>>()
                .ok()?;
            limits.from = Some(nets);
            items.next();
        }
        let rest: Vec<&str> = items.collect();
        match rest[..] {
            [] => {}
            ["restrict", "pty"] => limits.forwarding = false,
            _ => return None,
        }
        Some(limits)
    }

    /// The facts a guest is told at login and by `vmshare whoami`, one line.
    pub fn describe(&self, now: i64) -> String {
        let mut parts = Vec::new();
        match self.expires {
            Some(at) if self.expired(now) => {
                parts.push(format!("access ended at {}", civil::utc(at)))
            }
            Some(at) => parts.push(format!(
                "access ends in {} ({})",
                civil::span(at - now),
                civil::utc(at)
            )),
            None => parts.push("access does not expire".to_string()),
        }
        if let Some(nets) = &self.from {
            let list: Vec<String> = nets.iter().map(Network::to_string).collect();
            parts.push(format!("only from {}", list.join(", ")));
        }
        if !self.forwarding {
            parts.push("no forwarding".to_string());
        }
        parts.join("; ")
    }
}

/// What a guest is told when they log in, one line.
pub fn guest_notice(guest: &str, owner: &str, limits: &Limits, now: i64, host: &str) -> String {
    format!(
        "vmshare: you are {guest}, a guest in {owner}'s account; {}; to leave: 'ssh vmshare@{host} leave {owner}'",
        limits.describe(now)
    )
}

/// Options split at the commas outside double quotes; `None` for an
/// unterminated quote or an empty item.
fn split_options(opts: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in opts.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                items.push(&opts[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&opts[start..]);
    (!quoted && items.iter().all(|i| !i.is_empty())).then_some(items)
}

/// The value of option `item` if it is `prefix` (`name="`) and a value
/// with no quote inside.
fn quoted<'a>(item: &'a str, prefix: &str) -> Option<&'a str> {
    item.strip_prefix(prefix)?
        .strip_suffix('"')
        .filter(|v| !v.contains('"'))
}

/// `YYYYMMDDHHMMSSZ` as [`Limits::options`] writes it.
fn parse_sshd_time(s: &str) -> Option<i64> {
    let digits = s.strip_suffix('Z')?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize, len: usize| digits.get(at..at + len)?.parse::<i64>().ok();
    civil_seconds(
        field(0, 4)?,
        field(4, 2)?,
        field(6, 2)?,
        field(8, 2)?,
        field(10, 2)?,
        field(12, 2)?,
    )
    .ok()
}

/// Seconds since the epoch of a UTC date and time, checked field by field.
pub fn civil_seconds(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
) -> Result<i64, String> {
    if !YEARS.contains(&year) {
        return Err(format!(
            "year {year} is out of range ({}-{})",
            YEARS.start(),
            YEARS.end()
        ));
    }
    if !(1..=12).contains(&month) || day < 1 || day > civil::days_in_month(year, month) {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a date"));
    }
    if hour > 23 || minute > 59 || second > 59 || hour < 0 || minute < 0 || second < 0 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    Ok((civil::days_from_civil(year, month) + day - 1) * 86_400
        + hour * 3600
        + minute * 60
        + second)
}

/// An `expires` value: a TOML offset date-time, as seconds since the epoch
/// (a fraction of a second is dropped: access ends no later than written).
pub fn deadline(value: &toml::value::Datetime) -> Result<i64, String> {
    use toml::value::Offset;
    let (date, time, offset) = match (value.date, value.time, value.offset) {
        (Some(d), Some(t), Some(o)) => (d, t, o),
        (Some(_), Some(_), None) => {
            return Err(format!(
                "`expires` = {value} has no UTC offset; write it with one, e.g. {value}Z"
            ))
        }
        (Some(_), None, _) => {
            return Err(format!(
                "`expires` = {value} is a date alone; write a date-time with a UTC offset, e.g. {value}T18:00:00Z"
            ))
        }
        _ => {
            return Err(format!(
                "`expires` = {value} is a time alone; write a date-time with a UTC offset, e.g. 2026-12-01T{value}Z"
            ))
        }
    };
    let local = civil_seconds(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
        i64::from(time.hour),
        i64::from(time.minute),
        i64::from(time.second.unwrap_or(0)),
    )
    .map_err(|why| format!("`expires` = {value}: {why}"))?;
    let minutes = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes),
    };
    Ok(local - minutes * 60)
}

/// A deadline given on the command line, relative to `now`: `90s`, `30m`,
/// `2h`, `1d`, `2w`, or an RFC 3339 date-time with an offset
/// (`2026-12-01T18:00:00Z`). It must lie in the future.
pub fn parse_when(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let unit = text
        .char_indices()
        .last()
        .and_then(|(i, c)| match c {
            's' => Some((i, 1)),
            'm' => Some((i, 60)),
            'h' => Some((i, 3600)),
            'd' => Some((i, 86_400)),
            'w' => Some((i, 7 * 86_400)),
            _ => None,
        })
        .filter(|&(i, _)| i > 0 && text[..i].bytes().all(|b| b.is_ascii_digit()));
    let at = match unit {
        Some((i, scale)) => text[..i]
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| format!("{text:?} is too far ahead"))?,
        None => {
            let value: toml::value::Datetime = text.parse().map_err(|_| {
                format!(
                    "{text:?} is neither a duration (90s, 30m, 2h, 1d, 2w) nor a date-time with a UTC offset (2026-12-01T18:00:00Z)"
                )
            })?;
            deadline(&value).map_err(|why| why.replace("`expires` = ", ""))?
        }
    };
    if !YEARS.contains(&civil::fields(at)[0]) {
        return Err(format!("{text:?} is too far ahead"));
    }
    if at <= now {
        return Err(format!(
            "{text:?} ({}) is not in the future",
            civil::utc(at)
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_strictly() {
        for good in [
            "198.51.100.7",
            "203.0.113.0/24",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1",
            "::/0",
            "127.0.0.2/32",
        ] {
            let n = net(good);
            assert_eq!(n.to_string().parse::<Network>(), Ok(n), "{good}");
        }
        for bad in [
            "",
            "203.0.113.5/24",
            "203.0.113.0/33",
            "203.0.113.0/024",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113",
            "0203.0.113.1",
            "example.org",
            "*",
            "10.0.0.0/8,10.1.0.0/16",
            "fe80::1%eth0",
            "2001:db8::1/129",
            " 10.0.0.1",
            "!10.0.0.1",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?} accepted");
        }
        assert!("203.0.113.5/24"
            .parse::<Network>()
            .unwrap_err()
            .contains("did you mean 203.0.113.0/24"));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("203.0.113.0/24").contains(ip("203.0.113.200")));
        assert!(!net("203.0.113.0/24").contains(ip("203.0.114.1")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("127.0.0.2").contains(ip("127.0.0.2")));
        assert!(!net("127.0.0.2").contains(ip("127.0.0.1")));
        assert!(net("127.0.0.2").contains(ip("::ffff:127.0.0.2")));
        assert!(net("::1").contains(ip("::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
    }

    #[test]
    fn options_round_trip() {
        let all = Limits {
            expires: Some(1_795_975_200),
            from: Some(vec![
                net("203.0.113.0/24"),
                net("2001:db8::/32"),
                net("198.51.100.7"),
            ]),
            forwarding: false,
        };
        assert_eq!(
            all.options(),
            "expiry-time=\"20261129180000Z\",from=\"203.0.113.0/24,2001:db8::/32,198.51.100.7\",restrict,pty"
        );
        let variants = [
            Limits::default(),
            all.clone(),
            Limits {
                expires: None,
                ..all.clone()
            },
            Limits {
                from: None,
                ..all.clone()
            },
            Limits {
                forwarding: true,
                ..all.clone()
            },
            Limits {
                expires: None,
                from: None,
                ..all.clone()
            },
        ];
        for limits in variants {
            let opts = limits.options();
            assert!(!opts.contains(' '));
            assert_eq!(Limits::from_options(&opts), Some(limits), "{opts}");
        }
        for bad in [
            "restrict",
            "pty,restrict",
            "expiry-time=\"20261202120000\"",
            "expiry-time=\"20261202120000Z\"restrict,pty",
            "from=\"\"",
            "from=\"10.0.0.1\",,restrict,pty",
            "command=\"/bin/sh\"",
            "restrict,pty,from=\"10.0.0.1\"",
        ] {
            assert_eq!(Limits::from_options(bad), None, "{bad}");
        }
    }

    #[test]
    fn expiry_and_address_are_checked() {
        let l = Limits {
            expires: Some(1000),
            from: Some(vec![net("127.0.0.2")]),
            forwarding: true,
        };
        let ok = Some("127.0.0.2".parse().unwrap());
        assert_eq!(l.check(999, ok), Ok(()));
        assert_eq!(l.check(1000, ok), Err(Breach::Expired(1000)));
        let other = Some("127.0.0.1".parse().unwrap());
        assert_eq!(l.check(0, other), Err(Breach::Address(other)));
        assert_eq!(l.check(0, None), Err(Breach::Address(None)));
        assert_eq!(Limits::default().check(i64::MAX, None), Ok(()));
    }

    fn dt(s: &str) -> toml::value::Datetime {
        s.parse().unwrap()
    }

    #[test]
    fn deadlines_need_an_offset() {
        assert_eq!(deadline(&dt("1970-01-01T00:00:00Z")), Ok(0));
        assert_eq!(deadline(&dt("2026-12-01T18:00:00Z")), Ok(1_796_148_000));
        assert_eq!(
            deadline(&dt("2026-12-01T20:00:00+02:00")),
            Ok(1_796_148_000)
        );
        assert_eq!(deadline(&dt("2026-12-01T18:00:00.999Z")), Ok(1_796_148_000));
        assert!(deadline(&dt("2026-12-01T18:00:00"))
            .unwrap_err()
            .contains("no UTC offset"));
        assert!(deadline(&dt("2026-12-01"))
            .unwrap_err()
            .contains("date alone"));
        assert!(deadline(&dt("18:00:00"))
            .unwrap_err()
            .contains("time alone"));
        assert!(deadline(&dt("0000-01-01T00:00:00Z"))
            .unwrap_err()
            .contains("out of range"));
        assert!(deadline(&dt("1969-12-31T23:59:59Z")).is_err());
    }

    #[test]
    fn command_line_deadlines() {
        let now = 1_700_000_000;
        assert_eq!(parse_when("2h", now), Ok(now + 7200));
        assert_eq!(parse_when("1d", now), Ok(now + 86_400));
        assert_eq!(parse_when("90s", now), Ok(now + 90));
        assert_eq!(parse_when("2026-12-01T18:00:00Z", now), Ok(1_796_148_000));
        for bad in [
            "",
            "h",
            "-2h",
            "2x",
            "2 h",
            "0s",
            "2020-01-01T00:00:00Z",
            "2026-12-01",
            "2026-12-01T18:00:00",
            "99999999999999d",
        ] {
            assert!(parse_when(bad, now).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn guests_are_told_their_limits() {
        let l = Limits {
            expires: Some(7140),
            from: Some(vec![net("203.0.113.0/24")]),
            forwarding: false,
        };
        assert_eq!(
            l.describe(0),
            "access ends in 1h59m (1970-01-01T01:59:00Z); only from 203.0.113.0/24; no forwarding"
        );
        assert_eq!(Limits::default().describe(0), "access does not expire");
    }
}
