//! OpenSSH public keys as the grant file holds them: one plain key per line,
//! in its one canonical spelling.

use sha2::{Digest, Sha256};
use ssh_key::{HashAlg, PublicKey};

use super::model::GuestKey;

/// authorized_keys options that take no value (the others contain `=`).
const FLAG_OPTIONS: [&str; 14] = [
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "port-forwarding",
    "pty",
    "restrict",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Whether `text` is padded base64 whose unused trailing bits are zero: the
/// only spelling an encoder produces for its bytes.
fn is_canonical_base64(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    let value = |b: u8| match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let data = &bytes[..bytes.len() - pad];
    if pad > 2 || data.iter().any(|&b| value(b).is_none()) {
        return false;
    }
    let last = data.last().and_then(|&b| value(b)).unwrap_or(0);
    match pad {
        1 => last & 0b11 == 0,
        2 => last & 0b1111 == 0,
        _ => true,
    }
}

/// Parses one plain OpenSSH public key line: `type base64 [comment]`.
pub fn parse_key(line: &str) -> Result<GuestKey, String> {
    // One vectorized search for all three bytes: this runs on every key
    // of every reload.
    match memchr::memchr3(b'\n', b'\r', 0, line.as_bytes()).map(|i| line.as_bytes()[i]) {
        Some(0) => return Err("key contains a NUL byte".into()),
        Some(_) => return Err("key contains a line break; each key must be one line".into()),
        None => {}
    }
    match parse_plain_ed25519(line) {
        Some(key) => Ok(key),
        None => parse_general(line),
    }
}

/// [`parse_key`] for any line, through ssh-key: every key type, any
/// spacing. The plain ed25519 path must give what this gives.
fn parse_general(line: &str) -> Result<GuestKey, String> {
    let first = line.split_ascii_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err("empty key; expected `type base64 [comment]`".into());
    }
    if first.contains('=')
        || first.contains('"')
        || first.contains(',')
        || FLAG_OPTIONS.iter().any(|o| first.eq_ignore_ascii_case(o))
    {
        return Err(format!(
            "key starts with options ({first}); options such as command= or from= are not allowed, only `type base64 [comment]`"
        ));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        format!("not an OpenSSH public key ({e}); expected `type base64 [comment]`")
    })?;
    let mut words = line.split_ascii_whitespace();
    let algorithm = words.next().unwrap_or_default().to_string();
    let blob = words.next().unwrap_or_default().to_string();
    if algorithm != key.algorithm().as_str() {
        return Err(format!(
            "key type `{first}` does not match the key data (`{}`)",
            key.algorithm().as_str()
        ));
    }
    // The blob is used as text (by the PAM hook and for "one key, one
    // guest"), so it must be the one canonical base64 spelling of the key.
    if !is_canonical_base64(&blob) {
        return Err("key's base64 is not in canonical form".into());
    }
    // The bytes too: ssh-key reads some encodings sshd refuses (an ed25519
    // key whose inner length field is wrong), which would also be a second
    // spelling of a key. Encoded without allocating; the canonical line is
    // never longer than the line it came from.
    let mut buf = vec![0u8; line.len() + 64];
    let canonical = key.encode_openssh(&mut buf).ok();
    if canonical.and_then(|c| c.split(' ').nth(1)) != Some(blob.as_str()) {
        return Err("key data is not in canonical form; sshd would not read this key".into());
    }
    Ok(GuestKey {
        algorithm,
        blob: blob.into(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string().into(),
        comment: key.comment().to_string(),
    })
}

/// The wire form of an ed25519 public key ahead of its 32 bytes: the
/// length-prefixed algorithm name, then the length of the key.
const ED25519_WIRE_PREFIX: &[u8; 19] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20";
/// 19 bytes of prefix and 32 of key: 68 base64 characters, never padded.
const ED25519_WIRE_BYTES: usize = 51;
const ED25519_BLOB_CHARS: usize = 68;

/// The common case, a plain `ssh-ed25519` line, decoded directly: most of
/// a reload at scale is key parsing, and this is several times cheaper
/// than the general parser. Returns `None` for anything else (other key
/// types, other spacing, a blob that is not exactly one ed25519 key), which
/// then takes the general path; for every line it accepts, it gives what
/// the general path gives (`plain_ed25519_agrees_with_the_general_parser`).
///
/// sshd reads an ed25519 blob as the algorithm string, a 32-byte string and
/// nothing after it; 51 bytes are always 68 base64 characters without
/// padding, each group decoding one way, so the spelling is canonical.
fn parse_plain_ed25519(line: &str) -> Option<GuestKey> {
    // As ssh-key splits a line: trailing whitespace trimmed, single spaces.
    let rest = line.trim_end().strip_prefix("ssh-ed25519 ")?;
    let (blob, comment) = match memchr::memchr(b' ', rest.as_bytes()) {
        Some(at) => (rest.get(..at)?, rest.get(at + 1..)?),
        None => (rest, ""),
    };
    if blob.len() != ED25519_BLOB_CHARS {
        return None;
    }
    let wire = decode_base64_groups::<ED25519_WIRE_BYTES>(blob.as_bytes())?;
    if !wire.starts_with(ED25519_WIRE_PREFIX) {
        return None;
    }
    Some(GuestKey {
        algorithm: "ssh-ed25519".to_string(),
        blob: blob.into(),
        fingerprint: sha256_fingerprint(&wire).into(),
        comment: comment.to_string(),
    })
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Each byte's value in base64, or 0xff.
const BASE64_VALUES: [u8; 256] = {
    let mut values = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        values[BASE64[i] as usize] = i as u8;
        i += 1;
    }
    values
};

/// Decodes base64 text without padding into exactly `N` bytes, `N` a
/// multiple of 3 (so every character carries whole bits and the spelling
/// is the only one); `None` for any other length or character.
fn decode_base64_groups<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if !N.is_multiple_of(3) || text.len() != N / 3 * 4 {
        return None;
    }
    let mut out = [0u8; N];
    for (group, bytes) in text.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let mut bits = 0u32;
        for &c in group {
            let value = BASE64_VALUES[usize::from(c)];
            if value == 0xff {
                return None;
            }
            bits = (bits << 6) | u32::from(value);
        }
        bytes.copy_from_slice(&bits.to_be_bytes()[1..]);
    }
    Some(out)
}

/// Decodes standard base64 (padding optional); `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = BASE64_VALUES[usize::from(c)];
        if value == 0xff {
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Reads SSH wire data: `string` and fixed-size integers.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }
}

/// The `SHA256:` fingerprint of the CA that signed an OpenSSH certificate
/// (`algorithm` ends `-cert-v01@openssh.com`, `blob` its base64), read
/// from the wire format (PROTOCOL.certkeys) without checking the
/// signature: sshd did, when it let the certificate in. `None` for a
/// certificate type not known here or data that does not parse.
pub fn certificate_authority_fingerprint(algorithm: &str, blob: &str) -> Option<String> {
    let base = algorithm.strip_suffix("-cert-v01@openssh.com")?;
    // The key's own fields, after the nonce, by key type.
    let fields = match base {
        "ssh-ed25519" => 1,
        "ssh-rsa" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => 2,
        "sk-ssh-ed25519@openssh.com" | "sk-ssh-ed25519" => 2,
        "sk-ecdsa-sha2-nistp256@openssh.com" | "sk-ecdsa-sha2-nistp256" => 3,
        "ssh-dss" => 4,
        _ => return None,
    };
    let bytes = decode_base64(blob)?;
    let mut wire = Wire(&bytes);
    if wire.string()? != algorithm.as_bytes() {
        return None;
    }
    wire.string()?; // nonce
    for _ in 0..fields {
        wire.string()?;
    }
    wire.take(8 + 4)?; // serial, type
    for _ in 0..2 {
        wire.string()?; // key id, principals
    }
    wire.take(8 + 8)?; // valid after, valid before
    for _ in 0..3 {
        wire.string()?; // critical options, extensions, reserved
    }
    Some(sha256_fingerprint(wire.string()?))
}

/// `SHA256:` and the SHA-256 of `data` in base64 without padding, as
/// `ssh-keygen -l` prints a fingerprint. Built in a buffer of its exact
/// length (a push per character was most of this on every key of a
/// reload).
fn sha256_fingerprint(data: &[u8]) -> String {
    const PREFIX: &[u8; 7] = b"SHA256:";
    // 32 bytes: ten whole groups of three, then two bytes (three characters).
    let mut text = [0u8; PREFIX.len() + 43];
    text[..PREFIX.len()].copy_from_slice(PREFIX);
    let digest: [u8; 32] = Sha256::digest(data).into();
    // Three bytes, four characters; the last two bytes give three.
    let (whole, rest) = digest.split_at(30);
    let groups = whole.chunks_exact(3).map(|g| [g[0], g[1], g[2]]);
    let last = [[rest[0], rest[1], 0]];
    let out = text[PREFIX.len()..].chunks_mut(4);
    for (group, out) in groups.chain(last).zip(out) {
        let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
        for (i, c) in out.iter_mut().enumerate() {
            *c = BASE64[((bits >> (18 - 6 * i)) & 63) as usize];
        }
    }
    // Every byte is ASCII (the lossy form, cheaper to write, was slower).
    std::str::from_utf8(&text).map_or_else(|_| String::new(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::parse::tests::KEY_A;

    #[test]
    fn every_key_type_sshd_offers_parses() {
        let keys = [
            KEY_A,
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMzqCPSJyE1Im61L/0OvhBBtkCV39DU3ad3EjNClZDLChyh05mothzD/v9pto7OvM1RAS8quho+24vx2qy2rASA= k@x",
            "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBGMfQZzZn541FrYdaDcT91Q7A3hQyfuErpEq34Qby6YogoTahnWgd9gSejwrLjowla4Uo2N7eMEtl+/xB1/UgBXa+bf5wwDkyZRpkV1UnUMBm2/JYKjIEICUGqoFaD41Kw== x",
            "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBMzqCPSJyE1Im61L/0OvhBBtkCV39DU3ad3EjNClZDLChyh05mothzD/v9pto7OvM1RAS8quho+24vx2qy2rASAAAAAEc3NoOg== fido@x",
            "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkWAAAABHNzaDo= fido@x",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDdY36PpdGmJHE2BY4V5ngXxgCIULo2bAMOGDetoKt73iSBFIcA92q0btRfkAIrMxu4BPfcd62uEyIvuELW0Zskg2hj3B3V8hhyEaekRnLO2Owsy78XJEW9kWuhMYf1R7HCeQVERNV2fh8SiwbkAx6HaRSpFvQ9xkARmZw3pKG/3Q== k@x",
        ];
        for key in keys {
            let parsed = parse_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(Some(parsed.algorithm.as_str()), key.split(' ').next());
            assert_eq!(Some(&*parsed.blob), key.split(' ').nth(1));
        }
    }

    #[test]
    fn only_canonical_base64_is_accepted() {
        assert!(is_canonical_base64("AAAA"));
        assert!(is_canonical_base64("AAE="));
        assert!(is_canonical_base64("AQ=="));
        assert!(!is_canonical_base64("AAF="), "non-zero trailing bits");
        assert!(!is_canonical_base64("AR=="), "non-zero trailing bits");
        assert!(!is_canonical_base64("AAA"), "unpadded");
        assert!(!is_canonical_base64("A==="));
        assert!(!is_canonical_base64("AA=A"));
        // An RSA key's blob is padded: the same bytes with non-zero
        // trailing bits must not pass as a second spelling of the key.
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDRD8a2xAEbUSXu7gYI3EQ9LBwWAnxRXDyeqHW5Y2ALdOQWj7iGK6Gg6eTlVpD5KvbxEV3BvUx1yWxaEP3fJ7P7TxHAxtaq0m4aGMtdOUGwT5lqjqY3xv+M+z3iyWXmfDRBGlg6SNGXo8xn4tFJjnCjT9LMZN/1WNQzrDubGDXI7w==";
        parse_key(rsa).unwrap();
        assert!(parse_key(&rsa.replace("7w==", "7x==")).is_err());
    }

    #[test]
    fn non_canonical_key_data_is_refused() {
        // KEY_A with its inner length field 0x20 changed to 0x720: canonical
        // base64, and ssh-key reads it, but sshd does not.
        let e = parse_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAHIGg3Nt1a6dCd8L2F3A0nbpXK1jMo0d3nT3tJ8NQd3uBs a@x",
        )
        .unwrap_err();
        assert!(e.contains("not in canonical form"), "{e}");
        parse_key(KEY_A).unwrap();
        parse_key(&KEY_A.replace(" a@x", " a@x  and  more")).unwrap();
    }

    fn ed25519_line(key: [u8; 32], comment: &str) -> String {
        let mut wire = ED25519_WIRE_PREFIX.to_vec();
        wire.extend_from_slice(&key);
        let blob = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(key))
            .to_openssh()
            .unwrap();
        let blob = blob.split(' ').nth(1).unwrap().to_string();
        assert_eq!(
            decode_base64_groups::<51>(blob.as_bytes())
                .unwrap()
                .as_slice(),
            wire
        );
        format!("ssh-ed25519 {blob}{comment}")
    }

    #[test]
    fn plain_ed25519_is_taken_directly() {
        let parsed = parse_plain_ed25519(KEY_A).expect("KEY_A is a plain ed25519 line");
        assert_eq!(Ok(parsed), parse_general(KEY_A));
        assert!(parse_plain_ed25519("ssh-rsa AAAA").is_none());
        assert!(parse_plain_ed25519(&KEY_A.replace(' ', "  ")).is_none());
        assert!(parse_plain_ed25519(&KEY_A.replace(' ', "\t")).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4_000))]
        /// Whatever the direct path accepts, the general parser accepts
        /// with the same result; every well-formed ed25519 line is taken
        /// by the direct path.
        #[test]
        fn plain_ed25519_agrees_with_the_general_parser(
            key in proptest::array::uniform32(proptest::num::u8::ANY),
            comment in "( [ -~\t\u{3000}\u{a0}é]{0,12})?",
            flip in proptest::option::of((0usize..120, proptest::num::u8::ANY)),
        ) {
            let mut line = ed25519_line(key, &comment).into_bytes();
            if let Some((at, byte)) = flip {
                let at = at % line.len();
                line[at] = byte;
            }
            let Ok(line) = String::from_utf8(line) else { return Ok(()) };
            match parse_plain_ed25519(&line) {
                Some(direct) => proptest::prop_assert_eq!(Ok(direct), parse_general(&line)),
                None => proptest::prop_assert!(
                    flip.is_some(),
                    "an unaltered line must take the direct path: {line:?}"
                ),
            }
        }
    }
}
