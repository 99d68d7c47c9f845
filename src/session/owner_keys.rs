//! Whether the owner's own key files let a key in for this login, by sshd's
//! own rules: comments and blank lines skipped, options parsed like
//! OpenSSH's `auth-options.c`, and a line counted only if sshd would have
//! accepted it here (not `cert-authority`, `from=` matching the client,
//! `expiry-time=` not past). Pure: the client and the time are parameters.
//!
//! The owner's files are written by whoever runs as the owner, guests
//! included, so anything sshd would not honour is not the owner's.

use std::net::IpAddr;

use crate::grant::civil::days_from_civil;
use crate::session::hook::AuthKey;

/// Who connected, as sshd saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// sshd's remote host name (the address itself unless `UseDNS yes`).
    pub host: String,
    /// The remote address; `None` if unknown (then no `from=` matches).
    pub ip: Option<IpAddr>,
}

/// The time to judge `expiry-time=` against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    /// Seconds since the epoch.
    pub now: i64,
    /// The local zone's offset from UTC in seconds, if it is fixed and
    /// known; `expiry-time` without `Z` is local time, as sshd's `mktime`.
    pub utc_offset: Option<i64>,
}

/// The widest offsets a zone has (UTC−12 to UTC+14).
const EARLIEST_OFFSET: i64 = 14 * 3600;

/// Whether any line of `text` (one authorized_keys file) lets `key` in.
pub fn accepts(text: &str, key: &AuthKey, client: &Client, when: &When) -> bool {
    text.lines()
        .any(|line| line_accepts(line, key, client, when))
}

/// Whether one authorized_keys line lets `key` in for this login.
pub fn line_accepts(line: &str, key: &AuthKey, client: &Client, when: &When) -> bool {
    let Some(entry) = split_line(line) else {
        return false;
    };
    if entry.algorithm != key.algorithm || entry.blob != key.blob {
        return false;
    }
    let Ok(options) = parse_options(entry.options) else {
        return false;
    };
    // A CA line authorizes certificates it signed, never the key itself;
    // `principals=` is refused on a plain key.
    if options.cert_authority || options.principals {
        return false;
    }
    if let Some(expiry) = options.expiry {
        if expiry.expired(when) {
            return false;
        }
    }
    match &options.from {
        Some(patterns) => match_host_and_ip(&client.host, client.ip, patterns),
        None => true,
    }
}

/// One authorized_keys line taken apart: options (empty if none), key type,
/// base64 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub options: &'a str,
    pub algorithm: &'a str,
    pub blob: &'a str,
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first word of `s` (up to a space or tab) and the rest after blanks.
fn word(s: &str) -> (&str, &str) {
    let end = s.find(is_blank).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start_matches(is_blank))
}

/// Splits a line as sshd reads it: leading blanks skipped; blank lines and
/// `#` comments are not entries. A line starting with a key type is a key
/// without options; otherwise the options run to the first blank outside
/// quotes (`\"` does not end a quote) and the key follows.
pub fn split_line(line: &str) -> Option<Entry<'_>> {
    let line = line.trim_start_matches(is_blank);
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (first, rest) = word(line);
    let (second, _) = word(rest);
    if looks_like_key(first, second) {
        return Some(Entry {
            options: "",
            algorithm: first,
            blob: second,
        });
    }
    let end = options_end(line)?;
    let (algorithm, rest) = word(line[end..].trim_start_matches(is_blank));
    let (blob, _) = word(rest);
    (!algorithm.is_empty() && !blob.is_empty()).then_some(Entry {
        options: &line[..end],
        algorithm,
        blob,
    })
}

/// Whether two words read as a public key (sshd's `sshkey_read`): a key
/// type name and base64. sshd knows its types by name; options are never
/// spelled like one (no `=` or `,` in a type, none ends a base64 blob).
fn looks_like_key(algorithm: &str, blob: &str) -> bool {
    !algorithm.is_empty()
        && !blob.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b))
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// Where the options end (sshd's `sshkey_advance_past_options`); `None`
/// for an unterminated quote.
fn options_end(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() && (quoted || !matches!(bytes[i], b' ' | b'\t')) {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'"') {
            i += 1;
        } else if bytes[i] == b'"' {
            quoted = !quoted;
        }
        i += 1;
    }
    (!quoted || i < bytes.len()).then_some(i)
}

/// What of a line's options decides whether it lets a key in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub cert_authority: bool,
    /// `principals=` is present.
    pub principals: bool,
    /// The `from=` pattern list.
    pub from: Option<String>,
    /// The earliest `expiry-time=`.
    pub expiry: Option<Expiry>,
}

/// Options that are flags: `restrict` and `cert-authority` as they are;
/// the others also with `no-` in front.
const FLAGS: [&str; 2] = ["restrict", "cert-authority"];
const NEGATABLE: [&str; 7] = [
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "touch-required",
    "verify-required",
    "pty",
    "user-rc",
];

/// Parses an options field like sshd's `sshauthopt_parse`: comma-separated,
/// names case-insensitive, values double-quoted. Anything sshd would reject
/// is an error (and sshd then skips the line).
pub fn parse_options(mut opts: &str) -> Result<Options, String> {
    let mut out = Options::default();
    let mut command = false;
    while !opts.is_empty() && !opts.starts_with(is_blank) {
        if let Some(rest) = flag(opts) {
            if starts_with_ci(opts, "cert-authority") {
                out.cert_authority = true;
            }
            opts = rest;
        } else if let Some((name, value, rest)) = valued(opts)? {
            match name {
                "command" if std::mem::replace(&mut command, true) => {
                    return Err("multiple \"command\" clauses".into())
                }
                "principals" if std::mem::replace(&mut out.principals, true) => {
                    return Err("multiple \"principals\" clauses".into())
                }
                "from" if out.from.replace(value.clone()).is_some() => {
                    return Err("multiple \"from\" clauses".into())
                }
                "expiry-time" => {
                    let t = parse_absolute_time(&value).ok_or("invalid expires time")?;
                    if out.expiry.is_none_or(|e| t.civil < e.civil) {
                        out.expiry = Some(t);
                    }
                }
                "environment" => check_environment(&value)?,
                "permitopen" | "permitlisten" => check_permit(&value, name == "permitlisten")?,
                "tunnel" => check_tunnel(&value)?,
                _ => {}
            }
            opts = rest;
        } else {
            return Err("unknown key option".into());
        }
        if opts.is_empty() || opts.starts_with(is_blank) {
            break;
        }
        opts = opts.strip_prefix(',').ok_or("unknown key option")?;
        if opts.is_empty() {
            return Err("unexpected end-of-options".into());
        }
    }
    Ok(out)
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A flag option at the start of `opts`; the text after it.
fn flag(opts: &str) -> Option<&str> {
    for name in FLAGS {
        if starts_with_ci(opts, name) {
            return Some(&opts[name.len()..]);
        }
    }
    let plain = if starts_with_ci(opts, "no-") {
        &opts[3..]
    } else {
        opts
    };
    NEGATABLE
        .iter()
        .find(|name| starts_with_ci(plain, name))
        .map(|name| &plain[name.len()..])
}

const VALUED: [&str; 8] = [
    "command",
    "principals",
    "from",
    "expiry-time",
    "environment",
    "permitopen",
    "permitlisten",
    "tunnel",
];

/// A `name="value"` option at the start of `opts`: its name, its value
/// with `\"` unescaped, and the text after it. `Ok(None)` if none starts.
#[allow(clippy::type_complexity)]
fn valued(opts: &str) -> Result<Option<(&'static str, String, &str)>, String> {
    let Some(name) = VALUED
        .iter()
        .find(|n| starts_with_ci(opts, n) && opts.as_bytes().get(n.len()) == Some(&b'='))
    else {
        return Ok(None);
    };
    let quoted = opts[name.len() + 1..]
        .strip_prefix('"')
        .ok_or("missing start quote")?;
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(Some((name, value, &quoted[i + 1..]))),
            '\\' if quoted[i + 1..].starts_with('"') => {
                chars.next();
                value.push('"');
            }
            c => value.push(c),
        }
    }
    Err("missing end quote".into())
}

fn check_environment(value: &str) -> Result<(), String> {
    match value.split_once('=') {
        Some((name, _))
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(())
        }
        _ => Err("invalid environment string".into()),
    }
}

/// `host:port` (`[v6]:port`), port `*` or a number or service name; for
/// `permitlisten` a bare port too.
fn check_permit(value: &str, bare_port: bool) -> Result<(), String> {
    let value = if bare_port && !value.contains(':') {
        format!("*:{value}")
    } else {
        value.to_string()
    };
    let (host, port) = match value.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or("invalid permission hostname")?;
            (host, rest.strip_prefix(':'))
        }
        None => match value.split_once([':', '/']) {
            Some((host, port)) => (host, Some(port)),
            None => (value.as_str(), None),
        },
    };
    if host.is_empty() || host.len() >= 1025 {
        return Err("invalid permission hostname".into());
    }
    match port {
        Some("*") => Ok(()),
        Some(p) if p.parse::<u16>().is_ok_and(|n| n > 0) => Ok(()),
        // A service name; sshd looks it up. Not judged here.
        Some(p) if !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err("invalid permission port".into()),
    }
}

fn check_tunnel(value: &str) -> Result<(), String> {
    if value.eq_ignore_ascii_case("any") || value.parse::<u32>().is_ok_and(|n| n <= 0x7fff_fffd) {
        Ok(())
    } else {
        Err("invalid tun device".into())
    }
}

/// An `expiry-time`: the date and time as written, read as if UTC, and
/// whether it was UTC (`Z` or `UTC` suffix) rather than local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub civil: i64,
    pub utc: bool,
}

impl Expiry {
    /// sshd refuses a line once its time has passed. Local time with an
    /// unknown offset counts as passed from the earliest moment it could
    /// be (a line that may be expired is not the owner's).
    pub fn expired(&self, when: &When) -> bool {
        let instant = match (self.utc, when.utc_offset) {
            (true, _) => self.civil,
            (false, Some(offset)) => self.civil - offset,
            (false, None) => self.civil - EARLIEST_OFFSET,
        };
        instant < when.now
    }
}

/// sshd's `parse_absolute_time`: `YYYYMMDD`, `YYYYMMDDHHMM` or
/// `YYYYMMDDHHMMSS`, optionally followed by `Z` or `UTC`.
pub fn parse_absolute_time(s: &str) -> Option<Expiry> {
    let (digits, utc) = if s.len() > 1 && (s.ends_with('Z') || s.ends_with('z')) {
        (&s[..s.len() - 1], true)
    } else if s.len() > 3 && starts_with_ci(&s[s.len() - 3..], "utc") {
        (&s[..s.len() - 3], true)
    } else {
        (s, false)
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize, len: usize| -> i64 {
        digits
            .get(at..at + len)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0)
    };
    let (year, month, day) = (field(0, 4), field(4, 2), field(6, 2));
    let (hour, minute, second) = (field(8, 2), field(10, 2), field(12, 2));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Like mktime, a day past the month's end runs into the next month.
    let civil =
        (days_from_civil(year, month) + day - 1) * 86400 + hour * 3600 + minute * 60 + second;
    (civil > 0).then_some(Expiry { civil, utc })
}

/// Outcome of matching against a pattern list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// A malformed list (an empty entry, an inconsistent network): refuses.
    Invalid,
    /// A `!pattern` matched: the list refuses.
    Negated,
    No,
    Yes,
}

/// sshd's `match_pattern`: `*` any run, `?` any one character.
pub fn match_pattern(s: &str, pattern: &str) -> bool {
    let (s, p) = (s.as_bytes(), pattern.as_bytes());
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// sshd's `match_pattern_list` as `match_hostname` calls it: `s` against
/// comma-separated patterns, case-insensitively; a matching `!pattern`
/// refuses outright.
pub fn match_hostname(host: &str, list: &str) -> Match {
    let host = host.to_ascii_lowercase();
    let mut got = Match::No;
    for sub in list.split(',') {
        let (negated, sub) = match sub.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, sub),
        };
        // sshd gives up on a pattern that does not fit its buffer.
        if sub.len() >= 1023 {
            return Match::No;
        }
        if match_pattern(&host, &sub.to_ascii_lowercase()) {
            if negated {
                return Match::Negated;
            }
            got = Match::Yes;
        }
    }
    got
}

/// A network `addr[/len]`; `Err` for one sshd calls inconsistent (a
/// length too long, or host bits set), `Ok(None)` for something that is no
/// address at all (then it is a wildcard pattern).
fn parse_cidr(s: &str) -> Result<Option<(IpAddr, u32)>, ()> {
    if s.len() >= 64 {
        return Ok(None);
    }
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => {
            if !len.starts_with(|c: char| c.is_ascii_digit()) {
                return Ok(None);
            }
            match len.parse::<u32>() {
                Ok(n) if n <= 128 => (addr, Some(n)),
                _ => return Ok(None),
            }
        }
        None => (s, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Ok(None);
    };
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits || host_bits(addr, len) != 0 {
        return Err(());
    }
    Ok(Some((addr, len)))
}

/// The address as a 128-bit number (v4 in the low bits) and its width.
fn as_bits(addr: IpAddr) -> (u128, u32) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn host_bits(addr: IpAddr, len: u32) -> u128 {
    let (value, bits) = as_bits(addr);
    let host = bits - len;
    if host == 0 {
        0
    } else {
        value & (u128::MAX >> (128 - host))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u32) -> bool {
    let ((a, abits), (n, nbits)) = (as_bits(ip), as_bits(net));
    if abits != nbits {
        return false;
    }
    let host = abits - len;
    let mask = if host >= 128 { 0 } else { u128::MAX << host };
    a & mask == n & mask
}

/// sshd's `addr_match_list`: the address against addresses, networks and
/// wildcards.
pub fn addr_match_list(ip: Option<IpAddr>, list: &str) -> Match {
    let mut got = Match::No;
    for entry in list.split(',') {
        let (negated, entry) = match entry.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let hit = match parse_cidr(entry) {
            _ if entry.is_empty() => return Match::Invalid,
            Err(()) => return Match::Invalid,
            Ok(Some((net, len))) => ip.is_some_and(|ip| in_network(ip, net, len)),
            Ok(None) => ip.is_some_and(|ip| match_pattern(&ip.to_string(), entry)),
        };
        if hit {
            if negated {
                return Match::Negated;
            }
            got = Match::Yes;
        }
    }
    got
}

/// sshd's `match_host_and_ip` as `from=` uses it: accepted when the
/// address or the host name matches and neither matches a `!pattern`.
pub fn match_host_and_ip(host: &str, ip: Option<IpAddr>, patterns: &str) -> bool {
    let by_ip = addr_match_list(ip, patterns);
    if ip.is_none() || matches!(by_ip, Match::Invalid | Match::Negated) {
        return false;
    }
    match match_hostname(host, patterns) {
        Match::Negated | Match::Invalid => false,
        by_host => by_host == Match::Yes || by_ip == Match::Yes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOwn";

    fn key() -> AuthKey {
        AuthKey {
            algorithm: "ssh-ed25519".into(),
            blob: BLOB.into(),
        }
    }

    fn client(ip: &str) -> Client {
        Client {
            host: ip.into(),
            ip: ip.parse().ok(),
        }
    }

    /// 2024-06-01T00:00:00Z.
    const NOW: When = When {
        now: 1_717_200_000,
        utc_offset: Some(0),
    };

    fn accepted(line: &str, from: &str) -> bool {
        line_accepts(line, &key(), &client(from), &NOW)
    }

    #[test]
    fn lines_sshd_accepts_are_the_owners() {
        for line in [
            format!("ssh-ed25519 {BLOB}"),
            format!("ssh-ed25519 {BLOB} me@laptop"),
            format!("  \tssh-ed25519\t{BLOB} with a comment"),
            format!("no-pty,no-X11-forwarding ssh-ed25519 {BLOB}"),
            format!("restrict,pty,command=\"echo \\\"a, b\\\" c\" ssh-ed25519 {BLOB} x"),
            format!("from=\"127.0.0.1\",no-pty ssh-ed25519 {BLOB}"),
            format!("FROM=\"10.0.0.0/8,127.0.0.0/8\" ssh-ed25519 {BLOB}"),
            format!("from=\"127.0.0.*\" ssh-ed25519 {BLOB}"),
            format!("from=\"!192.0.2.1,*\" ssh-ed25519 {BLOB}"),
            format!("expiry-time=\"20990101\" ssh-ed25519 {BLOB}"),
            format!("expiry-time=\"202406010000Z\" ssh-ed25519 {BLOB}"),
            format!("environment=\"A_1=x y\",permitopen=\"host:22\",permitlisten=\"8080\",tunnel=\"any\" ssh-ed25519 {BLOB}"),
            format!("permitopen=\"[::1]:*\",no-touch-required,verify-required ssh-ed25519 {BLOB}"),
        ] {
            assert!(accepted(&line, "127.0.0.1"), "{line}");
        }
    }

    #[test]
    fn lines_sshd_skips_are_not_the_owners() {
        for line in [
            format!("# ssh-ed25519 {BLOB}"),
            format!("   #ssh-ed25519 {BLOB}"),
            String::new(),
            format!("ssh-ed25519 {BLOB}x"),
            format!("ssh-rsa {BLOB}"),
            format!("from=\"192.0.2.1\" ssh-ed25519 {BLOB}"),
            format!("from=\"!127.0.0.1,*\" ssh-ed25519 {BLOB}"),
            format!("from=\"127.0.0.1,\" ssh-ed25519 {BLOB}"),
            format!("from=\"127.0.0.1/8\" ssh-ed25519 {BLOB}"),
            format!("from=\"127.0.0.1\",from=\"127.0.0.1\" ssh-ed25519 {BLOB}"),
            format!("expiry-time=\"20000101\" ssh-ed25519 {BLOB}"),
            format!("expiry-time=\"20990101\",expiry-time=\"20000101\" ssh-ed25519 {BLOB}"),
            format!("expiry-time=\"2099\" ssh-ed25519 {BLOB}"),
            format!("cert-authority ssh-ed25519 {BLOB}"),
            format!("no-pty,CERT-AUTHORITY ssh-ed25519 {BLOB}"),
            format!("principals=\"me\" ssh-ed25519 {BLOB}"),
            format!("bogus ssh-ed25519 {BLOB}"),
            format!("no-pty, ssh-ed25519 {BLOB}"),
            format!("no-ptyx ssh-ed25519 {BLOB}"),
            format!("no-restrict ssh-ed25519 {BLOB}"),
            format!("command=\"x ssh-ed25519 {BLOB}"),
            format!("command=x ssh-ed25519 {BLOB}"),
            format!("command=\"a\",command=\"b\" ssh-ed25519 {BLOB}"),
            format!("environment=\"=x\" ssh-ed25519 {BLOB}"),
            format!("permitopen=\"host\" ssh-ed25519 {BLOB}"),
            format!("tunnel=\"x\" ssh-ed25519 {BLOB}"),
        ] {
            assert!(!accepted(&line, "127.0.0.1"), "{line}");
        }
    }

    #[test]
    fn any_accepting_line_in_a_file_counts() {
        let text =
            format!("# mine\nfrom=\"192.0.2.1\" ssh-ed25519 {BLOB}\n\nssh-ed25519 {BLOB} ok\n");
        assert!(accepts(&text, &key(), &client("127.0.0.1"), &NOW));
        let text = format!("# ssh-ed25519 {BLOB}\nexpiry-time=\"20000101\" ssh-ed25519 {BLOB}\n");
        assert!(!accepts(&text, &key(), &client("127.0.0.1"), &NOW));
    }

    #[test]
    fn from_needs_the_client_address() {
        let line = format!("from=\"127.0.0.1\" ssh-ed25519 {BLOB}");
        let unknown = Client {
            host: "127.0.0.1".into(),
            ip: None,
        };
        assert!(!line_accepts(&line, &key(), &unknown, &NOW));
        // With UseDNS, the host name matches too.
        let named = Client {
            host: "Laptop.Example.org".into(),
            ip: "192.0.2.7".parse().ok(),
        };
        let line = format!("from=\"*.example.org\" ssh-ed25519 {BLOB}");
        assert!(line_accepts(&line, &key(), &named, &NOW));
        let line = format!("from=\"*.example.org,!192.0.2.0/24\" ssh-ed25519 {BLOB}");
        assert!(!line_accepts(&line, &key(), &named, &NOW));
    }

    #[test]
    fn addresses_match_like_sshd() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let table: &[(&str, &str, Match)] = &[
            ("192.0.2.1", "192.0.2.1", Match::Yes),
            ("192.0.2.1", "192.0.2.0/24", Match::Yes),
            ("192.0.2.1", "192.0.3.0/24", Match::No),
            ("192.0.2.1", "0.0.0.0/0", Match::Yes),
            ("192.0.2.1", "192.0.2.*", Match::Yes),
            ("192.0.2.1", "192.0.2.?", Match::Yes),
            ("192.0.2.10", "192.0.2.?", Match::No),
            ("192.0.2.1", "!192.0.2.0/24,*", Match::Negated),
            ("192.0.2.1", "*,!192.0.2.1", Match::Negated),
            ("192.0.2.1", "192.0.2.1/24", Match::Invalid),
            ("192.0.2.1", "192.0.2.0/33", Match::Invalid),
            ("192.0.2.1", "a,,b", Match::Invalid),
            ("192.0.2.1", "!", Match::Invalid),
            ("2001:db8::1", "2001:db8::/32", Match::Yes),
            ("2001:db8::1", "192.0.2.0/24", Match::No),
            ("2001:db8::1", "::/0", Match::Yes),
        ];
        for (addr, list, want) in table {
            assert_eq!(addr_match_list(ip(addr), list), *want, "{addr} in {list}");
        }
        assert_eq!(addr_match_list(None, "*"), Match::No);
    }

    #[test]
    fn wildcards_match_like_sshd() {
        for (s, p, want) in [
            ("abc", "abc", true),
            ("abc", "a*", true),
            ("abc", "*c", true),
            ("abc", "a?c", true),
            ("abc", "a*b*c*", true),
            ("abc", "ab", false),
            ("", "*", true),
            ("", "?", false),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
                "*a*a*a*a*a*a*a*a*a*c",
                false,
            ),
        ] {
            assert_eq!(match_pattern(s, p), want, "{s} ~ {p}");
        }
    }

    #[test]
    fn expiry_times_parse_like_sshd() {
        let t = |s: &str| parse_absolute_time(s).map(|e| (e.civil, e.utc));
        assert_eq!(t("20240601"), Some((1_717_200_000, false)));
        assert_eq!(t("202406010000Z"), Some((1_717_200_000, true)));
        assert_eq!(t("20240601000000utc"), Some((1_717_200_000, true)));
        assert_eq!(t("20240531235960"), Some((1_717_200_000, false)));
        assert_eq!(t("20240231"), t("20240302"));
        for bad in [
            "",
            "2024",
            "2024060",
            "20241301",
            "20240600",
            "2024060125",
            "x0240601",
            "19700101Z",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_expiry_with_an_unknown_zone_counts_from_its_earliest_moment() {
        let e = parse_absolute_time("20240601").unwrap();
        let at = |now: i64, utc_offset| When { now, utc_offset };
        assert!(!e.expired(&at(1_717_200_000, Some(0))));
        assert!(e.expired(&at(1_717_200_001, Some(0))));
        // UTC+2: midnight local was 22:00 UTC the day before.
        assert!(e.expired(&at(1_717_200_000 - 3600, Some(7200))));
        assert!(e.expired(&at(1_717_200_000 - 13 * 3600, None)));
        assert!(!e.expired(&at(1_717_200_000 - 15 * 3600, None)));
    }

    #[test]
    fn options_split_at_the_first_blank_outside_quotes() {
        let line = format!("command=\"a b\\\" c\",no-pty ssh-ed25519 {BLOB} c");
        let e = split_line(&line).unwrap();
        assert_eq!(e.options, "command=\"a b\\\" c\",no-pty");
        assert_eq!((e.algorithm, e.blob), ("ssh-ed25519", BLOB));
        assert_eq!(split_line("command=\"unterminated ssh-ed25519 AAAA"), None);
        assert_eq!(split_line("no-pty"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever precedes it, a line sshd would not read as a key
            /// with these options never lets the key in: commented lines,
            /// CA lines, expired or foreign-source lines.
            #[test]
            fn refused_forms_never_count(
                prefix in "[ \t]{0,3}",
                opts in "(no-pty|restrict|command=\"[a-z ,]{0,8}\"|pty)(,(no-pty|restrict|pty|no-agent-forwarding)){0,3}",
                comment in "[a-z@ ]{0,12}",
            ) {
                for refused in [
                    format!("{prefix}# {opts} ssh-ed25519 {BLOB} {comment}"),
                    format!("{prefix}{opts},cert-authority ssh-ed25519 {BLOB} {comment}"),
                    format!("{prefix}{opts},expiry-time=\"20000101Z\" ssh-ed25519 {BLOB} {comment}"),
                    format!("{prefix}from=\"192.0.2.1\",{opts} ssh-ed25519 {BLOB} {comment}"),
                ] {
                    prop_assert!(!accepted(&refused, "127.0.0.1"), "{}", refused);
                }
                let plain = format!("{prefix}{opts} ssh-ed25519 {BLOB} {comment}");
                prop_assert!(accepted(&plain, "127.0.0.1"), "{}", plain);
            }

            /// The parser takes any text without panicking, and a line
            /// that does not name the key never lets it in.
            #[test]
            fn arbitrary_lines_are_safe(line in ".{0,200}") {
                let in_line = line.contains(BLOB);
                prop_assert!(!accepted(&line, "127.0.0.1") || in_line);
            }

            /// A CIDR matches exactly the addresses whose leading bits agree.
            #[test]
            fn cidr_matches_by_prefix(a in any::<u32>(), b in any::<u32>(), len in 0u32..=32) {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let net = std::net::Ipv4Addr::from(b & mask);
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(a));
                let want = if (a & mask) == (b & mask) { Match::Yes } else { Match::No };
                prop_assert_eq!(addr_match_list(Some(ip), &format!("{net}/{len}")), want);
            }
        }
    }
}
