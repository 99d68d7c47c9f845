//! What the agent writes to the grant file for what etcd holds. Pure: no
//! file system, no network, no clock (times are parameters).
//!
//! A valid document is written as it is, under one comment line naming the
//! key and the revision applied. Anything else (an invalid or oversized
//! document, a deleted key, no contact in strict mode) becomes a grant file
//! that shares nothing: comments only, which the core reads as a valid,
//! empty grant file: no guest gets in, owners are untouched.

use vmshare::grant::parse;

/// Why the grant file says what it says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Outcome {
    /// The document at `revision` is applied.
    Applied { revision: i64 },
    /// The document at `revision` is invalid: nothing is shared.
    Invalid { revision: i64, error: String },
    /// The key does not exist (as of `revision`): nothing is shared.
    Missing { revision: i64 },
    /// No confirmed contact with etcd for max_staleness (or ever, since
    /// boot): nothing is shared until contact returns.
    Stale { reason: String },
}

impl Outcome {
    /// The problem to report, if any.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Applied { .. } => None,
            Outcome::Invalid { error, .. } => Some(error.clone()),
            Outcome::Missing { .. } => Some("the grants key does not exist".into()),
            Outcome::Stale { reason } => Some(reason.clone()),
        }
    }
}

/// The grant file text for the value of `key` at `revision` (`None`: the key
/// does not exist), and what it amounts to.
pub fn render(key: &str, value: Option<&[u8]>, revision: i64) -> (String, Outcome) {
    let Some(value) = value else {
        return (
            share_nothing(&format!(
                "{key} does not exist (revision {revision}): sharing nothing"
            )),
            Outcome::Missing { revision },
        );
    };
    let invalid = |error: String| {
        let text = share_nothing(&format!(
            "{key} at revision {revision} is invalid: sharing nothing\n{error}"
        ));
        (text, Outcome::Invalid { revision, error })
    };
    let doc = match std::str::from_utf8(value) {
        Ok(doc) => doc,
        Err(e) => return invalid(format!("the value is not UTF-8 (byte {})", e.valid_up_to())),
    };
    let text = format!("# vmshare-sync: {key} at revision {revision}\n{doc}");
    // What the daemon will read is the text with the header, so that is what
    // is checked; the header is one comment line, so positions are one line
    // down from the document's own.
    match parse::parse(&text) {
        Ok(_) => (text, Outcome::Applied { revision }),
        Err(diags) => {
            let error = diags
                .iter()
                .take(5)
                .map(|d| {
                    if d.line == 0 {
                        d.message.clone()
                    } else {
                        format!("line {}, column {}: {}", d.line - 1, d.column, d.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            invalid(error)
        }
    }
}

/// A grant file that shares nothing, saying why in comments. Every line of
/// `why` becomes a comment with control characters replaced, so nothing
/// from the store can end the comment.
pub fn share_nothing(why: &str) -> String {
    let mut text = String::from("# vmshare-sync: this VM shares nothing.\n");
    for line in why.lines() {
        let clean: String = line
            .chars()
            .take(500)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        text.push_str("# ");
        text.push_str(&clean);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use vmshare::grant::model::MAX_GRANT_FILE_BYTES;

    const KEY: &str = "/vmshare/v1/vms/vm-1";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";

    fn valid() -> String {
        format!(
            "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n"
        )
    }

    /// The text parses and grants no one anything.
    fn assert_shares_nothing(text: &str) {
        let grants = parse::parse(text).unwrap();
        assert!(grants.owners.is_empty(), "{text}");
    }

    #[test]
    fn a_valid_document_is_written_under_its_revision() {
        let (text, outcome) = render(KEY, Some(valid().as_bytes()), 42);
        assert_eq!(outcome, Outcome::Applied { revision: 42 });
        assert_eq!(
            text,
            format!("# vmshare-sync: {KEY} at revision 42\n{}", valid())
        );
        let grants = parse::parse(&text).unwrap();
        let bob = grants.owner("daemon").and_then(|o| o.guest("bob")).unwrap();
        assert!(bob.has_access(true));
    }

    #[test]
    fn an_empty_document_is_valid() {
        let (text, outcome) = render(KEY, Some(b""), 7);
        assert_eq!(outcome, Outcome::Applied { revision: 7 });
        assert_shares_nothing(&text);
    }

    #[test]
    fn bad_documents_share_nothing_and_say_where() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"[owners.daemon\n".to_vec(), "line 1"),
            (
                format!("{}stauts = \"accepted\"\n", valid()).into_bytes(),
                "line 7",
            ),
            (b"\xff\xfe".to_vec(), "not UTF-8"),
            (
                format!(
                    "[owners.daemon]\nsharing = true\n[owners.daemon.guests.x]\nstatus = \"accepted\"\nkeys = [\"{BOB}\\ncommand=\\\"sh\\\" {BOB}\"]\n"
                )
                .into_bytes(),
                "line 5",
            ),
            (
                b"[owners.daemon.guests.\"B\xc3\xb6b\"]\nstatus = \"accepted\"\n".to_vec(),
                "line 1",
            ),
            (
                "#".repeat(MAX_GRANT_FILE_BYTES + 1).into_bytes(),
                "limit",
            ),
        ];
        for (value, what) in cases {
            let (text, outcome) = render(KEY, Some(&value), 9);
            let Outcome::Invalid { revision, error } = &outcome else {
                panic!("{outcome:?}");
            };
            assert_eq!(*revision, 9);
            assert!(error.contains(what), "{what}: {error}");
            assert_shares_nothing(&text);
            assert!(text.len() < 4096, "the comment stays small");
        }
    }

    #[test]
    fn a_missing_key_shares_nothing() {
        let (text, outcome) = render(KEY, None, 11);
        assert_eq!(outcome, Outcome::Missing { revision: 11 });
        assert_shares_nothing(&text);
        assert!(text.contains("does not exist"));
    }

    #[test]
    fn nothing_from_the_store_escapes_the_comment() {
        let hostile = "x\n[owners.daemon]\nsharing = true\r[owners.daemon.guests.e]\u{2028}\u{85}";
        let text = share_nothing(hostile);
        assert_shares_nothing(&text);
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }
}
