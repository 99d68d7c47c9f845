//! The grant file in its plain layout, read straight from TOML's events.
//!
//! A general TOML document builds a tree of tables before serde sees it, and
//! at 10,000 guests that tree is most of a reload. The file as the CLI
//! writes it, and as the README shows it, has one plain layout: a header
//! `[owners.NAME]` with `key = value` lines, then headers
//! `[owners.NAME.guests.GUEST]` with theirs, values being strings, booleans
//! and arrays of strings. This module reads exactly that layout from the
//! events of TOML's own grammar (`toml_parser`, the parser under `toml`),
//! into the same raw structures serde would fill.
//!
//! It decides nothing: anything outside the layout, anything TOML's grammar
//! or its string rules report, any key defined twice, an unknown field or a
//! value of the wrong type makes it return `None`, and the caller then reads
//! the file through `toml` as before, which gives the positioned error or
//! the same result. So a file read here means what it means to `toml`
//! (`plain_layout_agrees_with_toml` in the tests and the `grants_plain` fuzz
//! target check this), and a hand-written file in another layout (inline
//! tables, dotted keys, `[owners]` on its own) is still read, just slower.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::Spanned;
use toml_parser::decoder::ScalarKind;
use toml_parser::parser::{Event, EventKind, RecursionGuard, ValidateWhitespace};
use toml_parser::{ParseError, Source};

use super::model::Status;
use super::parse::{RawFile, RawGuest, RawOwner};

/// `toml`'s own nesting limit; the plain layout never comes near it.
const NESTING_LIMIT: u32 = 80;

/// Reads `source` if it is in the plain layout; `None` sends it to `toml`.
pub(super) fn read(source: &str) -> Option<RawFile> {
    let toml = Source::new(source);
    let tokens = toml.lex().into_vec();
    let mut events: Vec<Event> = Vec::with_capacity(tokens.len());
    let mut errors: Option<ParseError> = None;
    {
        // The same receivers `toml` puts between the grammar and its tree:
        // whitespace, comments and newlines checked, nesting bounded.
        let mut checked = ValidateWhitespace::new(&mut events, toml);
        let mut bounded = RecursionGuard::new(&mut checked, NESTING_LIMIT);
        toml_parser::parser::parse_document(&tokens, &mut bounded, &mut errors);
    }
    if errors.is_some() {
        return None;
    }
    let mut reader = Reader {
        source: toml,
        events: &events,
        at: 0,
    };
    let mut file = RawFile::default();
    // Whether each owner's table was opened by its own header (it may then
    // not be opened again) or only on the way to a guest's.
    let mut explicit: BTreeMap<String, bool> = BTreeMap::new();
    while let Some(event) = reader.next_significant() {
        if event.kind() != EventKind::StdTableOpen {
            // A key/value at the top, an array of tables, or stray events.
            return None;
        }
        let header = reader.header()?;
        match header.as_slice() {
            [owners, owner] if owners.get_ref() == "owners" => {
                // An owner's table after one of its guests' would be legal
                // TOML (an implicit table defined later); rare enough to
                // leave to `toml`.
                if explicit.insert(owner.get_ref().clone(), true).is_some() {
                    return None;
                }
                let mut raw = RawOwner::default();
                reader.owner_fields(&mut raw)?;
                file.owners.insert(owner.clone(), raw);
            }
            [owners, owner, guests, guest]
                if owners.get_ref() == "owners" && guests.get_ref() == "guests" =>
            {
                explicit.entry(owner.get_ref().clone()).or_insert(false);
                let raw_owner = file.owners.entry(owner.clone()).or_default();
                if raw_owner.guests.contains_key(guest) {
                    return None;
                }
                let mut raw = RawGuest::default();
                reader.guest_fields(&mut raw)?;
                raw_owner.guests.insert(guest.clone(), raw);
            }
            _ => return None,
        }
    }
    Some(file)
}

/// One value of the plain layout.
enum Value<'i> {
    String(Spanned<Cow<'i, str>>),
    Boolean(bool),
    Datetime(Spanned<toml::value::Datetime>),
    /// An array of strings, with the span of the whole array.
    Strings(Spanned<Vec<Spanned<String>>>),
}

struct Reader<'e, 'i> {
    source: Source<'i>,
    events: &'e [Event],
    at: usize,
}

impl<'i> Reader<'_, 'i> {
    fn peek(&self) -> Option<&Event> {
        self.events.get(self.at)
    }

    fn next(&mut self) -> Option<Event> {
        let event = self.events.get(self.at).copied();
        self.at += 1;
        event
    }

    /// The next event that is not whitespace, a comment or a newline.
    fn next_significant(&mut self) -> Option<Event> {
        while let Some(event) = self.next() {
            if !matches!(
                event.kind(),
                EventKind::Whitespace | EventKind::Comment | EventKind::Newline
            ) {
                return Some(event);
            }
        }
        None
    }

    /// A key, decoded, with the span `toml` gives it.
    fn key(&self, event: Event) -> Option<Spanned<String>> {
        let raw = self.source.get(event)?;
        let mut decoded = Cow::Borrowed("");
        let mut errors: Option<ParseError> = None;
        raw.decode_key(&mut decoded, &mut errors);
        let span = event.span();
        errors
            .is_none()
            .then(|| Spanned::new(span.start()..span.end(), decoded.into_owned()))
    }

    /// The keys of a table header, after its `[`, through its `]`.
    fn header(&mut self) -> Option<Vec<Spanned<String>>> {
        let mut path = Vec::new();
        loop {
            let event = self.next()?;
            match event.kind() {
                EventKind::Whitespace | EventKind::KeySep => {}
                EventKind::SimpleKey => path.push(self.key(event)?),
                EventKind::StdTableClose => return Some(path),
                _ => return None,
            }
        }
    }

    /// The `key = value` lines up to the next header or the end, as
    /// (key, value) in order; `None` on a dotted key or a repeated one.
    fn fields(&mut self) -> Option<Vec<(String, Value<'i>)>> {
        let mut fields: Vec<(String, Value<'i>)> = Vec::new();
        loop {
            match self.peek().map(Event::kind) {
                None | Some(EventKind::StdTableOpen | EventKind::ArrayTableOpen) => {
                    return Some(fields)
                }
                Some(EventKind::Whitespace | EventKind::Comment | EventKind::Newline) => {
                    self.at += 1;
                }
                Some(EventKind::SimpleKey) => {
                    let event = self.next()?;
                    let key = self.key(event)?.into_inner();
                    self.skip_whitespace();
                    if self.next()?.kind() != EventKind::KeyValSep {
                        // A dotted key.
                        return None;
                    }
                    self.skip_whitespace();
                    let value = self.value()?;
                    if fields.iter().any(|(k, _)| *k == key) {
                        return None;
                    }
                    fields.push((key, value));
                }
                Some(_) => return None,
            }
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().map(Event::kind) == Some(EventKind::Whitespace) {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Option<Value<'i>> {
        let event = self.next()?;
        match event.kind() {
            EventKind::Scalar => match self.scalar(event)? {
                (ScalarKind::String, text) => Some(Value::String(text)),
                (ScalarKind::Boolean(value), _) => Some(Value::Boolean(value)),
                (ScalarKind::DateTime, text) => {
                    let span = text.span();
                    let value = text.get_ref().parse::<toml::value::Datetime>().ok()?;
                    Some(Value::Datetime(Spanned::new(span, value)))
                }
                _ => None,
            },
            EventKind::ArrayOpen => {
                let open = event;
                let mut items = Vec::new();
                loop {
                    let event = self.next()?;
                    match event.kind() {
                        EventKind::Whitespace
                        | EventKind::Comment
                        | EventKind::Newline
                        | EventKind::ValueSep => {}
                        EventKind::Scalar => match self.scalar(event)? {
                            (ScalarKind::String, text) => {
                                let span = text.span();
                                items.push(Spanned::new(span, text.into_inner().into_owned()));
                            }
                            _ => return None,
                        },
                        EventKind::ArrayClose => {
                            let span = open.span().start()..event.span().end();
                            return Some(Value::Strings(Spanned::new(span, items)));
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    fn scalar(&self, event: Event) -> Option<(ScalarKind, Spanned<Cow<'i, str>>)> {
        let raw = self.source.get(event)?;
        let mut decoded = Cow::Borrowed("");
        let mut errors: Option<ParseError> = None;
        let kind = raw.decode_scalar(&mut decoded, &mut errors);
        let span = event.span();
        errors
            .is_none()
            .then(|| (kind, Spanned::new(span.start()..span.end(), decoded)))
    }

    fn owner_fields(&mut self, owner: &mut RawOwner) -> Option<()> {
        for (key, value) in self.fields()? {
            match (key.as_str(), value) {
                ("sharing", Value::Boolean(sharing)) => owner.sharing = sharing,
                _ => return None,
            }
        }
        Some(())
    }

    fn guest_fields(&mut self, guest: &mut RawGuest) -> Option<()> {
        for (key, value) in self.fields()? {
            match (key.as_str(), value) {
                ("status", Value::String(word)) => {
                    let word: &str = word.get_ref();
                    let status: Result<Status, serde::de::value::Error> =
                        Status::deserialize(word.into_deserializer());
                    guest.status = Some(status.ok()?);
                }
                ("keys", Value::Strings(keys)) => guest.keys = keys.into_inner(),
                ("admin", Value::Boolean(admin)) => guest.admin = admin,
                ("expires", Value::Datetime(at)) => guest.expires = Some(at),
                ("from", Value::Strings(from)) => guest.from = Some(from),
                ("forwarding", Value::Boolean(on)) => guest.forwarding = Some(on),
                _ => return None,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde fills from the same text, spans included.
    fn through_toml(source: &str) -> Option<RawFile> {
        toml::from_str(source).ok()
    }

    /// Raw structures with every span spelled out (`Spanned` compares
    /// values only; its `Debug` shows spans too).
    fn spelled(file: &RawFile) -> String {
        format!("{file:#?}")
    }

    fn agrees(source: &str) -> bool {
        match (read(source), through_toml(source)) {
            (Some(plain), Some(general)) => {
                assert_eq!(spelled(&plain), spelled(&general), "{source}");
                true
            }
            (Some(plain), None) => panic!(
                "plain read a file toml refuses: {source}\n{}",
                spelled(&plain)
            ),
            (None, _) => false,
        }
    }

    const USUAL: &str = "# shared VMs\n[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"ssh-ed25519 AAAA bob@laptop\", 'ssh-ed25519 BBBB b']\n\n[owners.alice.guests.\"carol\"]  # quoted\nstatus = 'left'\nkeys = [\n  \"k1\", # one\n  \"k\\u0032\",\n]\n[owners.dave.guests.erin]\nkeys = []\n";

    #[test]
    fn the_usual_layout_is_read_as_toml_reads_it() {
        assert!(agrees(USUAL));
        assert!(agrees(""));
        assert!(agrees("# nothing\n\n"));
        assert!(agrees("[owners.alice]\n"));
    }

    #[test]
    fn anything_else_is_left_to_toml() {
        for other in [
            // Valid TOML in another layout.
            "[owners]\n[owners.alice]\nsharing = true\n",
            "[owners.alice.guests.bob]\n[owners.alice]\nsharing = true\n",
            "owners.alice.sharing = true\n",
            "[owners.alice]\nguests.bob.status = \"accepted\"\n",
            "[owners.alice]\nguests = { bob = { status = \"accepted\" } }\n",
            "[[owners.alice.guests.bob]]\n",
            // Invalid, for `toml` to say where.
            "[owners.alice]\nsharing = true\nsharing = false\n",
            "[owners.alice]\n[owners.alice]\n",
            "[owners.alice]\n[owners.\"alice\"]\n",
            "[owners.alice.guests.bob]\n[owners.alice.guests.bob]\n",
            "[owners.alice]\nsharing = \"yes\"\n",
            "[owners.alice]\nshared = true\n",
            "[owners.alice.guests.bob]\nstatus = \"friend\"\n",
            "[owners.alice.guests.bob]\nkeys = [1]\n",
            "[owners.alice.guests.bob]\nkeys = \"k\"\n",
            "[owners.alice.guests.bob]\nkeys = [\"a\\x\"]\n",
            "[owners.alice.guests.bob]\nkeys = [\"a\" \"b\"]\n",
            "[owners.alice]\nsharing = true # \u{7}\n",
            "[owners.alice]\nsharing = true\r",
            "[owners.alice.guests.bob.more]\n",
            "[people.alice]\n",
        ] {
            assert!(!agrees(other), "plain read {other:?}");
        }
    }

    use proptest::option::weighted;
    use proptest::prelude::*;
    use proptest::sample::select;

    /// One table of a generated file: mostly the plain layout's owner and
    /// guest tables with their fields, sometimes a piece outside it.
    fn table() -> impl Strategy<Value = String> {
        let owner = (
            select(OWNERS),
            weighted(0.7, select(SHARING)),
            weighted(0.1, select(ODD)),
        )
            .prop_map(|(owner, sharing, odd)| {
                format!(
                    "[owners.{owner}]\n{}{}",
                    sharing.unwrap_or(""),
                    odd.unwrap_or("")
                )
            });
        // A guest's fields, each present or not, in any order.
        let fields = (
            weighted(0.7, select(STATUS)),
            weighted(0.7, select(KEYS)),
            weighted(0.3, select(ADMIN)),
            weighted(0.4, select(LIMITS)),
        )
            .prop_flat_map(|(status, keys, admin, limits)| {
                Just(
                    [status, keys, admin, limits]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>(),
                )
                .prop_shuffle()
            });
        let guest = (
            select(OWNERS),
            select(GUESTS),
            fields,
            weighted(0.1, select(ODD)),
        )
            .prop_map(|(owner, guest, fields, odd)| {
                format!(
                    "[owners.{owner}.guests.{guest}]\n{}{}",
                    fields.concat(),
                    odd.unwrap_or("")
                )
            });
        prop_oneof![4 => owner, 6 => guest, 1 => select(ODD).prop_map(str::to_string)]
    }

    fn file() -> impl Strategy<Value = String> {
        proptest::collection::vec(table(), 0..8).prop_map(|tables| tables.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]
        /// Whatever the plain reader reads, `toml` reads the same, spans
        /// included, with or without a byte changed.
        #[test]
        fn plain_layout_agrees_with_toml(
            text in file(),
            flip in proptest::option::of((0usize..600, select(FLIPS))),
        ) {
            let mut text = text.into_bytes();
            if let Some((at, byte)) = flip {
                if !text.is_empty() {
                    let at = at % text.len();
                    text[at] = byte;
                }
            }
            if let Ok(text) = String::from_utf8(text) {
                agrees(&text);
            }
        }
    }

    /// Most files the property above makes must take the plain reader, or
    /// it would check little.
    #[test]
    fn the_property_mostly_reads_plain_files() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut read_plain = 0;
        for _ in 0..1_000 {
            let text = file().new_tree(&mut runner).unwrap().current();
            read_plain += usize::from(agrees(&text));
        }
        assert!(read_plain > 300, "only {read_plain} of 1,000 read plain");
    }

    const OWNERS: &[&str] = &["alice", "bob", "\"alice\"", " 'carol' ", "dave"];
    const GUESTS: &[&str] = &["bob", "carol", "'bob'", "\"erin\"", "frank", "g1", "g2"];
    const SHARING: &[&str] = &["sharing = true\n", "sharing = false # off\n"];
    const STATUS: &[&str] = &[
        "status = \"accepted\"\n",
        "status = 'invited'\n",
        "status = \"\"\"left\"\"\"  \n",
        "status=\"rejected\"\n",
    ];
    const ADMIN: &[&str] = &["admin = true\n", "admin = false\n"];
    const LIMITS: &[&str] = &[
        "expires = 2026-12-01T18:00:00Z\n",
        "expires = 2026-12-01T18:00:00.5+02:00 # later\n",
        "expires = 2026-12-01 18:00:00-01:30\n",
        "from = [\"203.0.113.0/24\", '2001:db8::/32']\n",
        "from = [\n  \"198.51.100.7\", # one\n]\n",
        "from = []\n",
        "forwarding = false\n",
        "forwarding = true\n",
    ];
    const KEYS: &[&str] = &[
        "keys = [\"k1\", \"k2\"]\n",
        "keys = [\n  'k3', # c\n  \"\\u00e9\",\n]\n",
        "keys = []\n",
        "keys = [ \"\"\"k\nk\"\"\" ]\n",
    ];
    /// Pieces outside the plain layout, valid TOML or not.
    const ODD: &[&str] = &[
        "[owners]\n",
        "[owners.alice.guests]\n",
        "[[owners.alice.guests.bob]]\n",
        "sharing = 1\n",
        "admin = \"yes\"\n",
        "expires = 2026-12-01T18:00:00\n",
        "expires = 2026-12-01\n",
        "expires = \"2026-12-01T18:00:00Z\"\n",
        "from = \"10.0.0.0/8\"\n",
        "from = [1]\n",
        "forwarding = \"no\"\n",
        "status = \"nope\"\n",
        "keys = [1, 2]\n",
        "keys = [[\"k\"]]\n",
        "guests.bob.status = \"accepted\"\n",
        "other = \"x\"\n",
        "# comment\n\n",
        "   \t\n",
    ];

    const FLIPS: &[u8] = b" \t\n\r#=[]\".,'\\{}ab0\x7f";
}
