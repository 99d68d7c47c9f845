//! Short proptest runs of the fuzz targets' properties (see `fuzz/` and
//! docs/fuzzing.md), so every test run exercises them: the grant-file
//! parser and validator, the key lookup's arguments, the snapshot reader,
//! its key index, the control socket's frames and `SSH_AUTH_INFO_0`.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod props;
mod scratch;

use proptest::prelude::*;

use props::{LookupFixture, KEYS};

fn fixture(snapshot: bool) -> (tempfile::TempDir, LookupFixture) {
    let dir = scratch::trusted_tempdir("fuzz-props");
    let fixture = LookupFixture::new(dir.path(), &dir.path().join("run"), snapshot);
    (dir, fixture)
}

/// Pieces of grant files, valid and hostile.
fn grant_piece() -> impl Strategy<Value = String> {
    let quoted_keys: Vec<String> = KEYS.iter().map(|k| format!("\"{k}\"")).collect();
    prop_oneof![
        4 => prop::sample::select(vec![
            "[owners.alice]\n", "[owners.carol]\n", "[owners.root]\n", "[owners.toor]\n",
            "[owners.ghost]\n", "[owners.daemon]\n", "[owners.\"аlice\"]\n",
            "[owners.alice.guests.bob]\n", "[owners.alice.guests.eve]\n",
            "[owners.carol.guests.bob]\n", "[owners.alice.guests.\"b.o_b-1\"]\n",
            "[owners.alice.guests.\"bo\\u200db\"]\n", "[[owners.alice.guests.x]]\n",
            "sharing = true\n", "sharing = false\n", "sharing = \"yes\"\n",
            "status = \"accepted\"\n", "status = \"invited\"\n", "status = \"left\"\n",
            "status = \"rejected\"\n", "stauts = \"accepted\"\n", "keys = []\n",
            "owners = { alice = { sharing = true } }\n", "# comment\n", "\n",
        ]).prop_map(str::to_string),
        3 => (prop::sample::select(quoted_keys), prop::sample::select(vec![
            "", "command=\\\"/bin/sh\\\" ", "restrict ", "no-pty ",
        ])).prop_map(|(k, opt)| format!("keys = [\"{opt}{}]\n", &k[1..])),
        1 => prop::sample::select(KEYS.to_vec()).prop_map(|k| format!("keys = [\"{k}\\n{k}\"]\n")),
        1 => "\\PC{0,12}",
        1 => any::<String>(),
    ]
}

/// Snapshot bytes, mostly a current snapshot of the fixture's grant file
/// (through the placeholders) with ranges at line boundaries, sometimes not.
fn snapshot_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => prop::sample::select(KEYS.to_vec())
            .prop_map(|k| format!("{} vmshare:bob\n", k.rsplit_once(' ').map_or(k, |p| p.0))),
        1 => "\\PC{0,30}\n?",
    ];
    let pick = |v: Vec<&'static str>| prop::sample::select(v);
    (
        pick(vec!["\"$FORMAT\""; 8].into_iter().chain(["1", "999"]).collect()),
        pick(vec!["\"$GRANTS\""; 8].into_iter().chain(["\"/etc/vmshare/grants.toml\""]).collect()),
        pick(vec!["\"$VERSION\""; 8].into_iter().chain(["null"]).collect()),
        pick(vec!["0", "4102444800000000000"]),
        prop::bool::weighted(0.8),
        prop::collection::btree_map(
            pick(vec!["daemon", "daemon", "nobody", "alice"]),
            (any::<u8>(), any::<u64>(), any::<u64>()),
            0..3,
        ),
        prop::bool::weighted(0.8),
        prop::collection::vec(line, 0..4),
    )
        .prop_map(
            |(format, grants, version, written, valid, owners, auto, body)| {
                // Offsets of the body's line boundaries.
                let mut bounds = vec![0u64];
                for l in &body {
                    bounds.push(bounds[bounds.len() - 1] + l.len() as u64);
                }
                let owners: Vec<String> = owners
                    .iter()
                    .map(|(o, &(how, x, y))| {
                        let (off, len) = match how % 8 {
                            0 => (x, y),
                            1 => (x % 128, y % 128),
                            _ => {
                                let n = bounds.len() as u64;
                                let (i, j) = ((x % n) as usize, (y % n) as usize);
                                let (i, j) = (i.min(j), i.max(j));
                                (bounds[i], bounds[j] - bounds[i])
                            }
                        };
                        format!("\"{o}\":[{off},{len}]")
                    })
                    .collect();
                let digests = if auto { ",\"digests\":\"$AUTO\"" } else { "" };
                format!(
                    "{{\"format\":{format},\"grants_path\":{grants},\"version\":{version},\"sha256\":\"$SHA256\",\"written_ns\":{written},\"valid\":{valid},\"owners\":{{{}}}{digests}}}\n{}",
                    owners.join(","),
                    body.concat()
                )
                .into_bytes()
            },
        )
}

fn lookup_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "daemon", "nobody", "root", "--config", "", "SHA256:x", "ssh-ed25519",
            "AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW",
            "../daemon", "daemon\n", "DAEMON", "--help",
        ]).prop_map(str::to_string),
        1 => "\\PC{0,10}",
    ]
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        prop::sample::select(vec![
            r#"{"op":"leave"}"#,
            r#"{"op":"whoami"}"#,
            r#"{"op":"reload"}"#,
            r#"{"op":"format_disk"}"#,
            r#"{"op":"leave","guest":"bob"}"#,
            r#"{"op":"leave","op":"reload"}"#,
            r#"{"op":"confirm_leave","code":"1234-5678"}"#,
            r#"{"op":"confirm_leave"}"#,
            r#"{"op":"confirm_leave","code":7}"#,
            r#"{"op":"confirm_leave","code":"1","guest":"bob"}"#,
            r#"{"op":"leave","code":"1234-5678"}"#,
            r#"{"result":"confirm","owner":"a","guest":"b","expires_in":120}"#,
            r#"["leave"]"#,
            r#"{"op":null}"#,
            r#"{"result":"left","owner":"a","guest":"b"}"#,
            "{}",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    (any::<bool>(), any::<u32>(), body).prop_map(|(exact, len, body)| {
        let len = if exact { body.len() as u32 } else { len };
        let mut out = len.to_be_bytes().to_vec();
        out.extend(body);
        out
    })
}

fn blob_of(key: &str) -> &str {
    key.split(' ').nth(1).unwrap_or_default()
}

fn auth_line() -> impl Strategy<Value = String> {
    let blobs: Vec<&'static str> = KEYS.iter().map(|k| blob_of(k)).collect();
    prop_oneof![
        4 => (
            prop::sample::select(vec!["ssh-ed25519", "ssh-rsa", "ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256"]),
            prop::sample::select(blobs),
        ).prop_map(|(a, b)| format!("publickey {a} {b}")),
        1 => prop::sample::select(vec!["password", "keyboard-interactive", "publickey", "publickey x", "publickey ssh-ed25519 A\\nB"]).prop_map(str::to_string),
        1 => "\\PC{0,20}",
    ]
}

fn granted_line() -> impl Strategy<Value = String> {
    let keys: Vec<(&'static str, &'static str)> = KEYS
        .iter()
        .map(|k| (k.split(' ').next().unwrap_or_default(), blob_of(k)))
        .collect();
    prop_oneof![
        4 => (prop::sample::select(keys), prop::sample::select(vec!["bob", "eve", "", "bob extra"]))
            .prop_map(|((a, b), g)| format!("{a} {b} vmshare:{g}")),
        1 => "\\PC{0,20}",
    ]
}

type GenGuest = (&'static str, Option<&'static str>, Vec<usize>);
type GenOwner = (&'static str, Option<bool>, Vec<GenGuest>);

/// A grant file built from owners and guests (some of them uid 0, unknown
/// or sharing off), with hostile pieces inserted between its lines.
fn grant_file() -> impl Strategy<Value = String> {
    // Each guest has a key of its own (so that most files are valid), and
    // now and then one of another's.
    let guest = (
        prop_oneof![
            19 => prop::sample::select(vec![(0, "bob"), (1, "eve"), (2, "c.d-e_f"), (3, "dave")]),
            1 => Just((4, "Bob")),
        ],
        prop::option::weighted(
            0.9,
            prop::sample::select(vec!["accepted", "accepted", "invited", "rejected", "left"]),
        ),
        prop::bool::weighted(0.9),
        prop::option::weighted(0.1, 0..KEYS.len()),
    )
        .prop_map(|((own, name), status, with_own, other)| {
            let keys: Vec<usize> = with_own.then_some(own).into_iter().chain(other).collect();
            (name, status, keys)
        });
    let owner = (
        prop_oneof![
            9 => prop::sample::select(vec!["alice", "carol", "daemon", "ghost"]),
            1 => prop::sample::select(vec!["root", "toor"]),
        ],
        prop::option::weighted(0.9, prop::bool::weighted(0.8)),
        prop::collection::vec(guest, 0..4),
    );
    (
        prop::collection::vec(owner, 1..4),
        prop::option::weighted(0.3, (any::<prop::sample::Index>(), grant_piece())),
    )
        .prop_map(|(owners, inserts): (Vec<GenOwner>, _)| {
            let mut lines = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (name, sharing, guests) in owners {
                if !seen.insert(name) {
                    continue;
                }
                lines.push(format!("[owners.{name}]\n"));
                if let Some(s) = sharing {
                    lines.push(format!("sharing = {s}\n"));
                }
                let mut seen_guest = std::collections::HashSet::new();
                for (g, status, keys) in guests {
                    if !seen_guest.insert(g) {
                        continue;
                    }
                    lines.push(format!("[owners.{name}.guests.\"{g}\"]\n"));
                    if let Some(st) = status {
                        lines.push(format!("status = \"{st}\"\n"));
                    }
                    let keys: Vec<String> =
                        keys.iter().map(|&k| format!("\"{}\"", KEYS[k])).collect();
                    lines.push(format!("keys = [{}]\n", keys.join(", ")));
                }
            }
            if let Some((at, piece)) = inserts {
                let at = at.index(lines.len() + 1);
                lines.insert(at, piece);
            }
            lines.concat()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn grant_files(file in grant_file()) {
        props::check_grants(&file);
    }

    #[test]
    fn grant_pieces(pieces in prop::collection::vec(grant_piece(), 0..12)) {
        props::check_grants(&pieces.concat());
    }

    #[test]
    fn frames(data in frame()) {
        props::check_frame(&data);
    }

    #[test]
    fn auth_info(
        flags in any::<u8>(),
        info in prop::collection::vec(auth_line(), 0..4),
        lines in prop::collection::vec(granted_line(), 0..4),
    ) {
        props::check_auth_info(flags, &info.join("\n"), &lines.join("\n"));
    }

    #[test]
    fn auth_info_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let (flags, info, lines) = props::auth_inputs(&data);
        props::check_auth_info(flags, &info, &lines);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn key_lookup_args(
        args in prop::collection::vec(lookup_arg(), 0..6),
        with_snapshot in any::<bool>(),
    ) {
        thread_local! {
            static FIXTURES: [(tempfile::TempDir, LookupFixture); 2] = [fixture(false), fixture(true)];
        }
        let args = args.into_iter().map(Into::into).collect();
        FIXTURES.with(|f| props::check_lookup_args(&f[usize::from(with_snapshot)].1, args));
    }

    #[test]
    fn key_lookup_arg_bytes(which in any::<bool>(), data in prop::collection::vec(any::<u8>(), 0..48)) {
        thread_local! {
            static FIXTURES: [(tempfile::TempDir, LookupFixture); 2] = [fixture(false), fixture(true)];
        }
        FIXTURES.with(|f| props::check_lookup_args(&f[usize::from(which)].1, props::split_args(&data)));
    }

    #[test]
    fn key_index(
        grants in prop::collection::vec((0..2usize, 0..12u32, 0..8u8), 0..24),
        damage in prop::collection::vec((any::<u16>(), any::<u8>()), 0..3),
        body_only in any::<bool>(),
    ) {
        thread_local! {
            static DIR: tempfile::TempDir = scratch::trusted_tempdir("fuzz-props-index");
        }
        let input = props::IndexInput { grants, damage, body_only };
        DIR.with(|d| props::check_index(&d.path().join("snapshot"), &input));
    }

    #[test]
    fn key_index_bytes(data in prop::collection::vec(any::<u8>(), 0..64)) {
        thread_local! {
            static DIR: tempfile::TempDir = scratch::trusted_tempdir("fuzz-props-index");
        }
        DIR.with(|d| props::check_index(&d.path().join("snapshot"), &props::index_input(&data)));
    }

    #[test]
    fn snapshots(data in snapshot_bytes()) {
        thread_local! {
            static FIXTURE: (tempfile::TempDir, LookupFixture) = fixture(false);
        }
        FIXTURE.with(|f| props::check_snapshot(&f.1, &data));
    }
}
