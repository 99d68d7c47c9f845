//! The catalogue of hostile grant documents: one list, read by the core's
//! hostile-file tests (tests/hostile_grants.rs, which check each error's
//! position and wording) and by vmshare-sync's store tests
//! (sync/tests/sync_etcd.rs, which put every document in etcd and check
//! that the VM ends with no guest access, reported, the agent alive). And
//! its counterpart, [`good_documents`]: valid files in layouts and TOML 1.1
//! spellings the CLI does not write, which the agent enforces and so the
//! edit verbs must handle (tests/one_grammar.rs).
//!
//! Every document builds on [`valid`] (owner `daemon` shares with guest bob)
//! so a document that leaves bob's access in place is caught. Families with
//! a position give the needle whose last occurrence is where the error is.
// Each test binary uses a part of the catalogue.
#![allow(dead_code)]

/// The owner of every document: a local account on any Debian host.
pub const OWNER: &str = "daemon";

/// Guest bob's key, granted by [`valid`].
pub const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";
/// Another guest's key.
pub const EVE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNaFPlrBLiayZstrypSItk1wj697Z7P+QAJY5pEY5oc eve@x";

/// A valid grant file: `daemon` shares with accepted guest bob. Each hostile
/// case adds to it, so an empty lookup means the case took bob's access.
pub fn valid() -> String {
    format!(
        "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n"
    )
}

/// The valid file plus a guest mallory whose `keys` line is `keys_line`.
pub fn with_mallory(keys_line: &str) -> String {
    format!(
        "{}\n[owners.daemon.guests.mallory]\nstatus = \"accepted\"\n{keys_line}\n",
        valid()
    )
}

/// `keys` lines (for [`with_mallory`]) whose key holds a line break; the
/// error is at the line's column 9.
pub fn keys_with_line_breaks() -> Vec<String> {
    vec![
        // TOML escapes in a basic string.
        format!("keys = [\"{BOB}\\n{EVE}\"]"),
        format!("keys = [\"{BOB}\\r\\n{EVE}\"]"),
        format!("keys = [\"{BOB}\\u000a{EVE}\"]"),
        // Multi-line strings, basic and literal.
        format!("keys = [\"\"\"{BOB}\n{EVE}\"\"\"]"),
        format!("keys = ['''{BOB}\n{EVE}''']"),
        format!("keys = [\"\"\"{EVE}\n\"\"\"]"),
    ]
}

/// `keys` lines (for [`with_mallory`]) with authorized_keys options before
/// the key; the error is at the line's column 9.
pub fn keys_with_options() -> Vec<String> {
    let options = [
        "command=\\\"/bin/sh\\\"",
        "from=\\\"*\\\"",
        "environment=\\\"LD_PRELOAD=/tmp/x.so\\\"",
        "permitopen=\\\"localhost:22\\\"",
        "tunnel=\\\"0\\\"",
        "expiry-time=\\\"20990101\\\"",
        "no-pty,command=\\\"id\\\"",
        "restrict",
        "no-pty",
        "cert-authority",
        "agent-forwarding",
        "X11-Forwarding",
    ];
    let mut lines: Vec<String> = options
        .iter()
        .map(|option| format!("keys = [\"{option} {EVE}\"]"))
        .collect();
    // A literal string cannot smuggle them either.
    lines.push(format!("keys = ['command=\"/bin/sh\" {EVE}']"));
    lines
}

/// Hostile values of `expires`, `from` and `forwarding`, each a field line
/// for mallory (after `keys = ["EVE"]`): (field, the start of the value in
/// it where the error is, what the error says).
pub fn hostile_limits() -> Vec<(String, &'static str, &'static str)> {
    let many = vec!["\"10.0.0.1\""; 65].join(", ");
    let cases: [(&str, &'static str, &'static str); 18] = [
        ("expires = 2026-12-01T18:00:00", "2026", "has no UTC offset"),
        ("expires = 2026-12-01", "2026", "is a date alone"),
        ("expires = 18:00:00", "18:", "is a time alone"),
        ("expires = \"2026-12-01T18:00:00Z\"", "\"2026", "datetime"),
        (
            "expires = 0001-01-01T00:00:00Z",
            "0001",
            "year 1 is out of range",
        ),
        (
            "expires = 1969-12-31T23:59:59Z",
            "1969",
            "year 1969 is out of range",
        ),
        ("expires = 2026-02-30T00:00:00Z", "2026", ""),
        ("expires = 1796148000", "1796", "datetime"),
        ("from = []", "[]", "`from` is empty"),
        ("from = \"10.0.0.0/8\"", "\"10", "sequence"),
        ("from = [\"10.0.0.1/8\"]", "\"10", "has host bits set"),
        ("from = [\"10.0.0.0/33\"]", "\"10", "prefix length"),
        (
            "from = [\"10.0.0.256\"]",
            "\"10",
            "is not an IPv4 or IPv6 address",
        ),
        ("from = [\"*\"]", "\"*", "is not an IPv4 or IPv6 address"),
        (
            "from = [\"10.0.0.1\\\" command=\\\"/bin/sh\"]",
            "\"10",
            "is not an IPv4 or IPv6 address",
        ),
        (
            "from = [\"2001:db8::/32,10.0.0.0/8\"]",
            "\"2001",
            "prefix length",
        ),
        ("forwarding = \"false\"", "\"false", "boolean"),
        ("forwarding = 0", "0", "boolean"),
    ];
    let mut out: Vec<(String, &'static str, &'static str)> = cases
        .iter()
        .map(|&(field, at, what)| (field.to_string(), at, what))
        .collect();
    out.push((format!("from = [{many}]"), "[", "`from` has 65 entries"));
    out
}

/// The document for a [`hostile_limits`] field.
pub fn with_limit(field: &str) -> String {
    with_mallory(&format!("keys = [\"{EVE}\"]\n{field}"))
}

/// NUL bytes, escaped and raw: (document, needle where the error is, what
/// the error says).
pub fn nul_bytes() -> Vec<(String, String, &'static str)> {
    let raw = |text: String, what| {
        let at = text.find('\0').map_or(0, |i| i);
        let needle = text[at..].to_string();
        (text, needle, what)
    };
    vec![
        (
            with_mallory(&format!("keys = [\"{EVE}\\u0000\"]")),
            format!("\"{EVE}\\u0000\"]"),
            "key contains a NUL byte",
        ),
        (
            format!("{}\n[owners.daemon.guests.\"bo\\u0000b\"]\n", valid()),
            "\"bo\\u0000b\"".into(),
            "invalid guest name \"bo\\0b\"",
        ),
        (
            format!("{}\n[owners.\"daemon\\u0000\"]\n", valid()),
            "\"daemon\\u0000\"".into(),
            "invalid owner name \"daemon\\0\"",
        ),
        // Raw, in a comment, a string and a key.
        raw(format!("# a\0b\n{}", valid()), "invalid comment character"),
        raw(
            with_mallory(&format!("keys = [\"{EVE}\0\"]")),
            "invalid basic string",
        ),
        raw(format!("{}\0 = 1\n", valid()), "invalid"),
    ]
}

/// Nesting 100,000 deep in values, tables and keys.
pub fn deep_nesting() -> Vec<String> {
    let n = 100_000;
    [
        format!("x = {}{}\n", "[".repeat(n), "]".repeat(n)),
        format!("x = {}1{}\n", "{a = ".repeat(n), "}".repeat(n)),
        format!("[{}]\n", vec!["a"; n].join(".")),
        format!("{} = 1\n", vec!["a"; n].join(".")),
        with_mallory(&format!("keys = {}{}", "[".repeat(n), "]".repeat(n))),
        with_mallory(&format!("keys = [{}1{}]", "{a = ".repeat(n), "}".repeat(n))),
    ]
    .into_iter()
    .map(|text| format!("{}\n{text}", valid()))
    .collect()
}

/// Tables and keys defined twice, after the valid part.
pub fn duplicates() -> Vec<String> {
    let v = valid();
    vec![
        format!("{v}\n[owners.daemon]\nsharing = true\n"),
        format!("{v}\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\n"),
        format!("{v}\n[owners.\"daemon\"]\n"),
        format!("{v}status = \"left\"\n"),
        format!("{v}keys = []\n"),
        format!("{v}\n[[owners.daemon.guests.bob]]\n"),
        format!("{v}\n[owners]\ndaemon.sharing = true\n"),
        format!("{v}\n[owners.daemon.guests]\nbob.status = \"left\"\n"),
    ]
}

/// Names that look like others (appended to [`valid`]): (text, needle where
/// the error is, what the error says, the code point `check` shows).
pub fn look_alikes() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
)> {
    vec![
        // Cyrillic а (U+0430) in the owner, Cyrillic о (U+043E) in a guest.
        (
            "[owners.\"dаemon\"]\nsharing = true\n",
            "\"dаemon\"",
            "invalid owner name",
            Some("U+0430"),
        ),
        (
            "[owners.daemon.guests.\"bоb\"]\nstatus = \"accepted\"\n",
            "\"bоb\"",
            "invalid guest name",
            Some("U+043E"),
        ),
        // Full-width letters.
        (
            "[owners.\"ｄaemon\"]\n",
            "\"ｄaemon\"",
            "invalid owner name",
            Some("U+FF44"),
        ),
        (
            "[owners.daemon.guests.\"ｂｏｂ\"]\n",
            "\"ｂｏｂ\"",
            "invalid guest name",
            Some("U+FF42"),
        ),
        // A zero-width joiner, escaped and raw.
        (
            "[owners.daemon.guests.\"bo\\u200Db\"]\n",
            "\"bo\\u200Db\"",
            "invalid guest name",
            Some("U+200D"),
        ),
        (
            "[owners.daemon.guests.\"bo\u{200d}b\"]\n",
            "\"bo\u{200d}b\"",
            "invalid guest name",
            Some("U+200D"),
        ),
        (
            "[owners.\"dae\u{200d}mon\"]\n",
            "\"dae\u{200d}mon\"",
            "invalid owner name",
            Some("U+200D"),
        ),
        // Unquoted, a look-alike is a syntax error at the character.
        ("[owners.dаemon]\n", "аemon", "invalid unquoted key", None),
        // In a field name it is an unknown field, not a silent no-op.
        (
            "[owners.nobody]\nshаring = true\n",
            "аring",
            "invalid unquoted key",
            None,
        ),
        (
            "[owners.nobody]\n\"shаring\" = true\n",
            "\"shаring\"",
            "unknown field `shаring`",
            None,
        ),
    ]
}

/// Values of `admin` that are not a boolean (for `admin = VALUE` after
/// [`valid`]).
pub const ADMIN_NOT_BOOLEAN: [&str; 7] = [
    "\"yes\"",
    "\"true\"",
    "1",
    "0",
    "[true]",
    "{ sudo = true }",
    "2026-12-01T18:00:00Z",
];

/// Root as an owner, sharing with eve: well-formed, refused by the check
/// of the owner's uid.
pub fn root_as_owner() -> String {
    format!(
        "{}\n[owners.root]\nsharing = true\n\n[owners.root.guests.eve]\nstatus = \"accepted\"\nkeys = [\"{EVE}\"]\n",
        valid()
    )
}

/// Every hostile document of the catalogue, whole, named by family.
pub fn documents() -> Vec<(&'static str, String)> {
    let mut all: Vec<(&'static str, String)> = Vec::new();
    for keys in keys_with_line_breaks() {
        all.push(("key with a line break", with_mallory(&keys)));
    }
    for keys in keys_with_options() {
        all.push(("key with options", with_mallory(&keys)));
    }
    for (field, _, _) in hostile_limits() {
        all.push(("hostile limit", with_limit(&field)));
    }
    for (text, _, _) in nul_bytes() {
        all.push(("NUL byte", text));
    }
    for text in deep_nesting() {
        all.push(("deep nesting", text));
    }
    for text in duplicates() {
        all.push(("duplicate", text));
    }
    for (hostile, _, _, _) in look_alikes() {
        all.push(("look-alike name", format!("{}\n{hostile}", valid())));
    }
    for value in ADMIN_NOT_BOOLEAN {
        all.push((
            "admin not a boolean",
            format!("{}admin = {value}\n", valid()),
        ));
    }
    all.push(("misspelt field", format!("{}admn = true\n", valid())));
    all.push((
        "misspelt field",
        format!("{}stauts = \"accepted\"\n", valid()),
    ));
    all.push((
        "guest name that is a path",
        format!(
            "{}\n[owners.daemon.guests.\"../x\"]\nstatus = \"accepted\"\n",
            valid()
        ),
    ));
    all.push((
        "field set twice",
        format!("{}admin = false\nadmin = true\n", valid()),
    ));
    all.push(("root as owner", root_as_owner()));
    all
}

/// Valid grant documents the CLI would not write: other layouts (dotted
/// keys, inline tables, `[owners]` on its own) and TOML 1.1 spellings.
/// Each grants `daemon`'s accepted guest bob, named by what is unusual.
pub fn good_documents() -> Vec<(&'static str, String)> {
    let bob = |fields: &str| {
        format!(
            "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\n{fields}keys = [\"{BOB}\"]\n"
        )
    };
    vec![
        ("status with a \\x escape (TOML 1.1)", bob("status = \"acc\\x65pted\"\n")),
        ("status with a \\u escape", bob("status = \"\\u0061ccepted\"\n")),
        ("status as a literal string", bob("status = 'accepted'\n")),
        ("status as a multi-line string", bob("status = \"\"\"accepted\"\"\"\n")),
        (
            "expires without seconds (TOML 1.1)",
            bob("status = \"accepted\"\nexpires = 2099-01-01T00:00Z\n"),
        ),
        (
            "expires with a space, an offset and a fraction",
            bob("status = \"accepted\"\nexpires = 2099-01-01 02:00:00.5+02:00\nfrom = [\"0.0.0.0/0\", \"::/0\"]\nforwarding = false\n"),
        ),
        (
            "guest inline table over lines, trailing comma (TOML 1.1)",
            format!("[owners.daemon]\nsharing = true\n\n[owners.daemon.guests]\nbob = {{\n  status = \"accepted\",\n  keys = [\"{BOB}\"],\n}}\n"),
        ),
        (
            "guests as one inline table",
            format!("[owners.daemon]\nsharing = true\nguests = {{ bob = {{ status = \"accepted\", keys = [\"{BOB}\"] }} }}\n"),
        ),
        (
            "guest as a dotted inline table",
            format!("[owners.daemon]\nsharing = true\nguests.bob = {{ status = \"accepted\", keys = [\"{BOB}\"] }}\n"),
        ),
        (
            "dotted keys under [owners]",
            format!("[owners]\ndaemon.sharing = true\ndaemon.guests.bob.status = \"accepted\"\ndaemon.guests.bob.keys = [\"{BOB}\"]\n"),
        ),
        (
            "owner inline under [owners], over lines (TOML 1.1)",
            format!("[owners]\ndaemon = {{\n  sharing = true,\n  guests = {{ bob = {{ status = \"accepted\", keys = [\"{BOB}\"] }} }},\n}}\n"),
        ),
        (
            "owners as one inline table",
            format!("owners = {{ daemon = {{ sharing = true, guests = {{ bob = {{ status = \"accepted\", keys = [\"{BOB}\"] }} }} }} }}\n"),
        ),
        (
            "dotted keys at the top",
            format!("owners.daemon.sharing = true\nowners.daemon.guests.bob = {{ status = \"accepted\", keys = [\"{BOB}\"] }}\n"),
        ),
        (
            "dotted owner, guest in a table of its own",
            format!("[owners]\ndaemon.sharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n"),
        ),
        (
            "guest before its owner's table",
            format!("# bob first\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\n  '{BOB}', # laptop\n]\n\n[owners.daemon]\nsharing = true\n"),
        ),
        (
            "quoted names and another owner in another layout",
            format!("[owners.\"daemon\"]\n\"sharing\" = true\n\n[owners.\"daemon\".guests.'bob']\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n\n[owners]\nnobody = {{ sharing = true, guests = {{ eve = {{ status = \"accepted\", keys = [\"{EVE}\"] }} }} }}\n"),
        ),
    ]
}
