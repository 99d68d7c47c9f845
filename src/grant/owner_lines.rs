//! An owner's own authorized_keys lines, as vmshare holds them for a
//! sharing owner: taken apart just far enough to know which key a line
//! lets in. The options stay the owner's, verbatim; sshd reads them from
//! the key lookup's output exactly as it would from the home file.

use std::path::PathBuf;

use super::key::parse_key;

/// One authorized_keys line taken apart: options (empty if none), key
/// type, base64 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub options: &'a str,
    pub algorithm: &'a str,
    pub blob: &'a str,
}

/// One of an owner's lines, checked: the line as written and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerLine {
    /// The whole line, without its newline.
    pub line: String,
    pub algorithm: String,
    /// The base64 key, canonical.
    pub blob: String,
    /// `SHA256:…`.
    pub fingerprint: String,
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
/// type name and base64. Options are never spelled like one (no `=` or
/// `,` in a type, none ends a base64 blob).
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

/// Most bytes one held line may have (sshd reads lines of up to 8 KiB
/// per key plus options; a longer one is a mistake).
pub const MAX_LINE: usize = 16 * 1024;

/// Checks one line for holding: one line, not too long, options sshd can
/// split off, and a public key that parses (the key of a `cert-authority`
/// line is the CA's). `Ok(None)` for a blank or comment line.
pub fn check_line(line: &str) -> Result<Option<OwnerLine>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.contains(['\n', '\r', '\0']) {
        return Err("a key line must be one line".into());
    }
    if line.len() > MAX_LINE {
        return Err(format!(
            "the line is {} bytes; at most {MAX_LINE}",
            line.len()
        ));
    }
    let trimmed = line.trim_matches(is_blank);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let entry = split_line(trimmed)
        .ok_or("not an authorized_keys line (options followed by `type base64`)")?;
    let key = parse_key(&format!("{} {}", entry.algorithm, entry.blob))?;
    Ok(Some(OwnerLine {
        line: trimmed.to_string(),
        algorithm: key.algorithm,
        blob: key.blob.to_string(),
        fingerprint: key.fingerprint.to_string(),
    }))
}

/// The key lines of authorized_keys text that can be held, and one error
/// (1-based line number and reason) for each line that cannot.
pub fn parse_lines(text: &str) -> (Vec<OwnerLine>, Vec<(usize, String)>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match check_line(line) {
            Ok(Some(l)) => lines.push(l),
            Ok(None) => {}
            Err(e) => errors.push((i + 1, e)),
        }
    }
    (lines, errors)
}

/// Whether `blob` (base64, as sshd reports the key that authenticated) is
/// the key of one of `lines`.
pub fn holds_key(lines: &[OwnerLine], blob: &str) -> bool {
    lines.iter().any(|l| l.blob == blob)
}

/// The text of held lines: one a line, in order, each once.
pub fn render(lines: &[OwnerLine]) -> String {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        if lines[..i].iter().any(|e| e.line == l.line) {
            continue;
        }
        out.push_str(&l.line);
        out.push('\n');
    }
    out
}

/// The owner's key files in her home, expanded like sshd's
/// `AuthorizedKeysFile` (`%h`, `%u`, `%%`; relative paths are under the
/// home): what a takeover reads.
pub fn key_file_paths(patterns: &[String], user: &str, home: &str) -> Vec<PathBuf> {
    patterns
        .iter()
        .map(|p| {
            let mut out = String::new();
            let mut chars = p.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('h') => out.push_str(home),
                    Some('u') => out.push_str(user),
                    Some('%') => out.push('%'),
                    Some(other) => {
                        out.push('%');
                        out.push(other);
                    }
                    None => out.push('%'),
                }
            }
            let path = PathBuf::from(out);
            if path.is_absolute() {
                path
            } else {
                PathBuf::from(home).join(path)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIoTB1TQTQtfNa9bsqcg4oHfPwhc18+zOZcJWYYyr1aX";

    #[test]
    fn options_are_kept_verbatim_and_the_key_found() {
        let line = format!(r#"from="10.0.0.0/8",command="echo \"hi there\"" {ED} me@home"#);
        let held = check_line(&line).unwrap().unwrap();
        assert_eq!(held.line, line);
        assert_eq!(held.algorithm, "ssh-ed25519");
        assert!(ED.ends_with(&held.blob));
        assert!(held.fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn comments_and_blanks_are_not_lines_and_junk_is_an_error() {
        assert_eq!(check_line("  # a comment").unwrap(), None);
        assert_eq!(check_line("").unwrap(), None);
        assert!(check_line("root:$6$hash:19000:0:99999:7:::").is_err());
        assert!(check_line(r#"command="unterminated ssh-ed25519 AAAA"#).is_err());
        assert!(check_line(&format!("{ED}\nssh-rsa AAAA")).is_err());
        let (lines, errors) = parse_lines(&format!("# keys\n{ED} a\n\nnonsense here\n"));
        assert_eq!(lines.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 4);
    }

    #[test]
    fn a_cert_authority_line_holds_the_ca_key() {
        let held = check_line(&format!("cert-authority,principals=\"alice\" {ED}"))
            .unwrap()
            .unwrap();
        assert!(holds_key(&[held], ED.split(' ').nth(1).unwrap()));
    }

    #[test]
    fn key_file_patterns_expand_like_sshd() {
        let files = key_file_paths(
            &[
                ".ssh/authorized_keys".into(),
                "/etc/keys/%u".into(),
                "%h/k%%".into(),
            ],
            "alice",
            "/home/alice",
        );
        assert_eq!(
            files,
            [
                PathBuf::from("/home/alice/.ssh/authorized_keys"),
                PathBuf::from("/etc/keys/alice"),
                PathBuf::from("/home/alice/k%"),
            ]
        );
    }

    #[test]
    fn render_writes_each_line_once() {
        let a = check_line(ED).unwrap().unwrap();
        let text = render(&[a.clone(), a]);
        assert_eq!(text, format!("{ED}\n"));
    }
}
