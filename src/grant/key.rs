//! OpenSSH public keys as the grant file holds them: one plain key per line,
//! in its one canonical spelling.

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
    if line.contains(['\n', '\r']) {
        return Err("key contains a line break; each key must be one line".into());
    }
    if line.contains('\0') {
        return Err("key contains a NUL byte".into());
    }
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
        blob,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment: key.comment().to_string(),
    })
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
            assert_eq!(Some(parsed.blob.as_str()), key.split(' ').nth(1));
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
}
