//! The grant file in its plain layout, read straight from TOML's events as
//! the grammar produces them (no tree, no list of events).
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
//! (`plain_layout_agrees_with_toml` here, and `check_grants` in the
//! property tests and the `grants` fuzz target, compare the two readers),
//! and a hand-written file in another layout (inline tables, dotted keys,
//! `[owners]` on its own) is still read, just slower.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::Spanned;
use toml_parser::decoder::{Encoding, ScalarKind};
use toml_parser::parser::{EventReceiver, RecursionGuard, ValidateWhitespace};
use toml_parser::{ErrorSink, ParseError, Source, Span};

use super::key::parse_key;
use super::model::{shares_work, Status};
use super::parse::{RawFile, RawGuest, RawKey, RawOwner};

/// `toml`'s own nesting limit; the plain layout never comes near it.
const NESTING_LIMIT: u32 = 80;

/// Reads `source` if it is in the plain layout; `None` sends it to `toml`.
/// A large file is read in two halves at once (at 10,000 guests the
/// reading is a third of a reload).
pub(super) fn read(source: &str) -> Option<RawFile> {
    match split_point(source).filter(|_| shares_work(source.len())) {
        Some(at) => read_split(source, at),
        None => Some(read_part(source, 0)?.file),
    }
}

/// Where a second half would start: the first line beginning with `[`
/// after the middle of the file.
fn split_point(source: &str) -> Option<usize> {
    let middle = source.len() / 2;
    let after = memchr::memmem::find(source.as_bytes().get(middle..)?, b"\n[")?;
    Some(middle + after + 1)
}

/// Reads `source` as two documents, before and from `at` (a line starting
/// with `[`), side by side, and joins them as one reading of the whole
/// would have: `None` if either half is outside the layout, or if the join
/// finds what the whole would have refused (a table defined in both
/// halves). A split that is not between two tables (`at` inside a
/// multi-line string or array) leaves the first half unterminated, which
/// the grammar refuses, so `toml` then reads the file.
pub(super) fn read_split(source: &str, at: usize) -> Option<RawFile> {
    let (head, tail) = source.split_at(at);
    let (first, second) = std::thread::scope(|scope| {
        let second = std::thread::Builder::new().spawn_scoped(scope, || read_part(tail, at));
        let first = read_part(head, 0);
        let second = match second {
            Ok(thread) => thread.join().ok().flatten(),
            Err(_) => read_part(tail, at),
        };
        (first, second)
    });
    join(first?, second?)
}

/// The second half's tables added to the first's, as the reader of the
/// whole file would have added them.
fn join(first: Part, second: Part) -> Option<RawFile> {
    let mut file = first.file;
    for (owner, raw) in second.file.owners {
        let header = second.explicit.get(owner.get_ref()).copied() == Some(true);
        match file.owners.get_mut(&owner) {
            None => {
                file.owners.insert(owner, raw);
            }
            // `[owners.NAME]` after the first half defined that owner.
            Some(_) if header => return None,
            // Merged whole (one pass over both sorted maps, not an insert
            // per guest); a guest in both halves leaves fewer than both.
            Some(known) => {
                let mut guests = raw.guests;
                let both = known.guests.len() + guests.len();
                known.guests.append(&mut guests);
                if known.guests.len() != both {
                    return None;
                }
            }
        }
    }
    Some(file)
}

/// What one document read gives: its tables, and which owners had a
/// header of their own.
struct Part {
    file: RawFile,
    explicit: BTreeMap<String, bool>,
}

/// Reads `source`, which starts `base` bytes into the file (spans are the
/// file's).
fn read_part(source: &str, base: usize) -> Option<Part> {
    if let Some(part) = read_lines(source, base) {
        return Some(part);
    }
    let toml = Source::new(source);
    let tokens = toml.lex().into_vec();
    let mut errors: Option<ParseError> = None;
    let mut reader = Reader::new(toml, base);
    {
        // The same receivers `toml` puts between the grammar and its tree:
        // whitespace, comments and newlines checked, nesting bounded. The
        // events are taken as they come, never held as a list.
        let mut checked = ValidateWhitespace::new(&mut reader, toml);
        let mut bounded = RecursionGuard::new(&mut checked, NESTING_LIMIT);
        toml_parser::parser::parse_document(&tokens, &mut bounded, &mut errors);
    }
    if errors.is_some() {
        return None;
    }
    reader.finish()
}

/// One value of the plain layout.
enum Value<'i> {
    String(Cow<'i, str>),
    Boolean(bool),
    Datetime(Spanned<toml::value::Datetime>),
    /// An array of strings, with the span of the whole array.
    Strings(Spanned<Vec<Spanned<Cow<'i, str>>>>),
}

/// Reads `source` if it is written exactly as the CLI writes a new file,
/// line by line, without TOML's lexer: empty lines; headers
/// `[owners.NAME]` and `[owners.NAME.guests.NAME]`; fields `NAME = VALUE`
/// whose value is `true`, `false`, a string in double quotes or a one-line
/// array of them (`["a", "b"]`); names of letters, digits, `_` and
/// `-`; strings without escapes or control characters. Every such line is
/// TOML that means just what it reads as; anything else (a comment, other
/// spacing, an escape, a date, a line ending in CR) gives `None`, and the
/// file is read from TOML's events. Tables and fields go through the same
/// [`Reader`] either way.
fn read_lines(source: &str, base: usize) -> Option<Part> {
    let mut reader = Reader::new(Source::new(source), base);
    // Searchers made once: a file of 10,000 guests has 30,000 lines.
    let equals = memchr::memmem::Finder::new(" = ");
    let comma = memchr::memmem::Finder::new(", ");
    let mut start = 0;
    for raw in lines_inclusive(source) {
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let at = base + start;
        start += raw.len();
        if line.is_empty() {
            continue;
        }
        if let Some(path) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let mut names = Vec::new();
            let mut from = at + 1;
            for name in path.split('.') {
                if !is_bare(name) {
                    return None;
                }
                names.push(Spanned::new(from..from + name.len(), Cow::Borrowed(name)));
                from += name.len() + 1;
            }
            reader.close_table()?;
            reader.open_table(names)?;
            reader.state = State::Fields;
            continue;
        }
        let eq = equals.find(line.as_bytes())?;
        let (key, value) = (line.get(..eq)?, line.get(eq + 3..)?);
        if !is_bare(key) {
            return None;
        }
        let at = at + key.len() + 3;
        let value = match value {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ if value.starts_with('"') => Value::String(Cow::Borrowed(plain_string(value)?)),
            _ => {
                let items = value.strip_prefix('[')?.strip_suffix(']')?;
                let mut strings = Vec::new();
                let mut from = at + 1;
                for item in split_on(items, &comma).filter(|_| !items.is_empty()) {
                    let text = plain_string(item)?;
                    strings.push(Spanned::new(from..from + item.len(), Cow::Borrowed(text)));
                    from += item.len() + 2;
                }
                Value::Strings(Spanned::new(at..at + value.len(), strings))
            }
        };
        reader.set_field(Cow::Borrowed(key), value)?;
    }
    reader.finish()
}

/// The lines of `text`, each with its `\n` (the last one may have none),
/// as `str::split_inclusive('\n')` gives them (found with memchr).
pub(crate) fn lines_inclusive(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest.as_bytes()).map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}

/// `text.split(sep)`, with `sep`'s searcher made by the caller.
fn split_on<'t>(
    text: &'t str,
    sep: &'t memchr::memmem::Finder<'_>,
) -> impl Iterator<Item = &'t str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let now = rest?;
        match sep.find(now.as_bytes()) {
            Some(i) => {
                rest = now.get(i + sep.needle().len()..);
                now.get(..i)
            }
            None => {
                rest = None;
                Some(now)
            }
        }
    })
}

/// A name of a table's header, as the raw structures keep it.
fn owned(name: Spanned<Cow<'_, str>>) -> Spanned<String> {
    let span = name.span();
    Spanned::new(span, name.into_inner().into_owned())
}

/// A TOML bare key.
fn is_bare(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().fold(true, |all, b| {
            all & (b.is_ascii_alphanumeric() | (b == b'_') | (b == b'-'))
        })
}

/// The text of `"…"` when it is all of `quoted` and holds no quote,
/// backslash or control character (so it means what it reads as).
fn plain_string(quoted: &str) -> Option<&str> {
    let text = quoted.strip_prefix('"')?.strip_suffix('"')?;
    // Printable ASCII by bytes (every key and name), all bytes looked at
    // without stopping early (so the check is vectorized); anything else
    // by chars.
    let ascii = |b: u8| (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\');
    (text.bytes().fold(true, |all, b| all & ascii(b))
        || text
            .chars()
            .all(|c| c != '"' && c != '\\' && !c.is_control()))
    .then_some(text)
}

/// Where in the layout the next event falls.
enum State<'i> {
    /// Before the first header: only blank lines and comments.
    Top,
    /// Inside `[…]`, its keys so far.
    Header(Vec<Spanned<Cow<'i, str>>>),
    /// In a table, between its `key = value` lines.
    Fields,
    /// After a field's key.
    Key(String),
    /// After `key =`.
    Value(String),
    /// Inside a field's array of strings: where it opened, its items.
    Array(String, usize, Vec<Spanned<Cow<'i, str>>>),
    /// Something outside the layout: the rest is ignored.
    Other,
    /// Transient, while a state is being replaced.
    Moving(PhantomData<&'i ()>),
}

/// The table whose fields are being read. A guest's owner is named as
/// read (no copy of the name for each of an owner's thousands of guests).
enum Table<'i> {
    Owner(Spanned<String>, RawOwner),
    Guest(Spanned<Cow<'i, str>>, Spanned<String>, RawGuest),
}

struct Reader<'i> {
    source: Source<'i>,
    /// Where `source` starts in the file.
    base: usize,
    state: State<'i>,
    table: Option<Table<'i>>,
    /// The fields set in the current table, to refuse one set twice.
    set: Vec<Cow<'i, str>>,
    file: RawFile,
    /// Whether each owner's table was opened by its own header (it may then
    /// not be opened again) or only on the way to a guest's.
    explicit: BTreeMap<String, bool>,
}

impl<'i> Reader<'i> {
    fn new(source: Source<'i>, base: usize) -> Self {
        Reader {
            source,
            base,
            state: State::Top,
            table: None,
            set: Vec::new(),
            file: RawFile::default(),
            explicit: BTreeMap::new(),
        }
    }

    fn finish(mut self) -> Option<Part> {
        match self.state {
            State::Top | State::Fields => {
                self.close_table()?;
                Some(Part {
                    file: self.file,
                    explicit: self.explicit,
                })
            }
            _ => None,
        }
    }

    /// The next state, given the current one and an event; `None` for an
    /// event outside the layout.
    fn on(&mut self, event: Kind, span: Span) {
        let state = std::mem::replace(&mut self.state, State::Moving(PhantomData));
        self.state = self.step(state, event, span).unwrap_or(State::Other);
    }

    fn step(&mut self, state: State<'i>, event: Kind, span: Span) -> Option<State<'i>> {
        use Kind::*;
        Some(match (state, event) {
            (State::Other, _) => State::Other,
            (state @ (State::Top | State::Fields), Blank) => state,
            (State::Top | State::Fields, TableOpen) => {
                self.close_table()?;
                State::Header(Vec::new())
            }
            (State::Header(path), Blank | KeySep) => State::Header(path),
            (State::Header(mut path), Key(encoding)) => {
                path.push(self.key(span, encoding)?);
                State::Header(path)
            }
            (State::Header(path), TableClose) => {
                self.open_table(path)?;
                State::Fields
            }
            (State::Fields, Key(encoding)) => {
                State::Key(self.key(span, encoding)?.into_inner().into_owned())
            }
            (State::Key(key), Blank) => State::Key(key),
            (State::Key(key), KeyValSep) => State::Value(key),
            (State::Value(key), Blank) => State::Value(key),
            (State::Value(key), Scalar(encoding)) => {
                let value = match self.decode_scalar(span, encoding)? {
                    (ScalarKind::String, text) => Value::String(text.into_inner()),
                    (ScalarKind::Boolean(value), _) => Value::Boolean(value),
                    (ScalarKind::DateTime, text) => {
                        let span = text.span();
                        let value = text.get_ref().parse::<toml::value::Datetime>().ok()?;
                        Value::Datetime(Spanned::new(span, value))
                    }
                    _ => return None,
                };
                self.set_field(Cow::Owned(key), value)?;
                State::Fields
            }
            (State::Value(key), ArrayOpen) => {
                State::Array(key, self.base + span.start(), Vec::new())
            }
            (State::Array(key, at, items), Blank | ValueSep) => State::Array(key, at, items),
            (State::Array(key, at, mut items), Scalar(encoding)) => {
                match self.decode_scalar(span, encoding)? {
                    (ScalarKind::String, text) => {
                        let text_span = text.span();
                        items.push(Spanned::new(text_span, text.into_inner()));
                        State::Array(key, at, items)
                    }
                    _ => return None,
                }
            }
            (State::Array(key, at, items), ArrayClose) => {
                let value = Value::Strings(Spanned::new(at..self.base + span.end(), items));
                self.set_field(Cow::Owned(key), value)?;
                State::Fields
            }
            _ => return None,
        })
    }

    /// A key, decoded, with the span `toml` gives it.
    fn key(&self, span: Span, encoding: Option<Encoding>) -> Option<Spanned<Cow<'i, str>>> {
        let raw = self.raw(span, encoding)?;
        let mut decoded = Cow::Borrowed("");
        let mut errors: Option<ParseError> = None;
        raw.decode_key(&mut decoded, &mut errors);
        errors
            .is_none()
            .then(|| Spanned::new(self.at(span), decoded))
    }

    fn decode_scalar(
        &self,
        span: Span,
        encoding: Option<Encoding>,
    ) -> Option<(ScalarKind, Spanned<Cow<'i, str>>)> {
        let raw = self.raw(span, encoding)?;
        let mut decoded = Cow::Borrowed("");
        let mut errors: Option<ParseError> = None;
        let kind = raw.decode_scalar(&mut decoded, &mut errors);
        errors
            .is_none()
            .then(|| (kind, Spanned::new(self.at(span), decoded)))
    }

    /// Where `span` of this reader's text is in the file.
    fn at(&self, span: Span) -> std::ops::Range<usize> {
        self.base + span.start()..self.base + span.end()
    }

    fn raw(&self, span: Span, encoding: Option<Encoding>) -> Option<toml_parser::Raw<'i>> {
        let text = self.source.input().get(span.start()..span.end())?;
        Some(toml_parser::Raw::new_unchecked(text, encoding, span))
    }

    /// Starts the table a header names, if it is one of the layout's.
    fn open_table(&mut self, path: Vec<Spanned<Cow<'i, str>>>) -> Option<()> {
        let mut path = path.into_iter();
        let (owners, owner) = (path.next()?, path.next()?);
        if owners.get_ref() != "owners" {
            return None;
        }
        match (path.next(), path.next(), path.next()) {
            (None, None, None) => {
                // An owner's table after one of its guests' would be legal
                // TOML (an implicit table defined later); rare enough to
                // leave to `toml`.
                if self
                    .explicit
                    .insert(owner.get_ref().to_string(), true)
                    .is_some()
                {
                    return None;
                }
                self.table = Some(Table::Owner(owned(owner), RawOwner::default()));
            }
            (Some(guests), Some(guest), None) if guests.get_ref() == "guests" => {
                let guest = owned(guest);
                // (Looked up before it is inserted: no copy of the name
                // for each of an owner's thousands of guests.)
                let name: &str = owner.get_ref();
                if !self.explicit.contains_key(name) {
                    self.explicit.insert(name.to_string(), false);
                }
                // A guest's table read twice is refused when it is filed
                // the second time (`close_table`), not looked up here.
                self.table = Some(Table::Guest(owner, guest, RawGuest::default()));
            }
            _ => return None,
        }
        self.set.clear();
        Some(())
    }

    /// Files the table just read.
    fn close_table(&mut self) -> Option<()> {
        match self.table.take() {
            None => {}
            Some(Table::Owner(name, raw)) => {
                self.file.owners.insert(name, raw);
            }
            Some(Table::Guest(owner, guest, raw)) => {
                let name: &str = owner.get_ref();
                if !self.file.owners.contains_key(name) {
                    self.file
                        .owners
                        .insert(owned(owner.clone()), RawOwner::default());
                }
                let owner = self.file.owners.get_mut(name)?;
                if owner.guests.insert(guest, raw).is_some() {
                    return None;
                }
            }
        }
        Some(())
    }

    fn set_field(&mut self, key: Cow<'i, str>, value: Value<'i>) -> Option<()> {
        if self.set.contains(&key) {
            return None;
        }
        match (self.table.as_mut()?, key.as_ref(), value) {
            (Table::Owner(_, owner), "sharing", Value::Boolean(sharing)) => owner.sharing = sharing,
            (Table::Guest(_, _, guest), field, value) => set_guest_field(guest, field, value)?,
            _ => return None,
        }
        self.set.push(key);
        Some(())
    }
}

fn set_guest_field(guest: &mut RawGuest, field: &str, value: Value<'_>) -> Option<()> {
    match (field, value) {
        ("status", Value::String(word)) => {
            let word: &str = &word;
            let status: Result<Status, serde::de::value::Error> =
                Status::deserialize(word.into_deserializer());
            guest.status = Some(status.ok()?);
        }
        // Each key parsed as it is read, by the thread reading this part.
        ("keys", Value::Strings(keys)) => {
            guest.keys = keys
                .into_inner()
                .into_iter()
                .map(|k| Spanned::new(k.span(), RawKey::Parsed(parse_key(k.get_ref()))))
                .collect()
        }
        ("admin", Value::Boolean(admin)) => guest.admin = admin,
        ("expires", Value::Datetime(at)) => guest.expires = Some(at),
        ("from", Value::Strings(from)) => {
            let span = from.span();
            guest.from = Some(Spanned::new(
                span,
                from.into_inner().into_iter().map(owned).collect(),
            ))
        }
        ("forwarding", Value::Boolean(on)) => guest.forwarding = Some(on),
        _ => return None,
    }
    Some(())
}

/// The events of TOML's grammar, as the layout tells them apart.
#[derive(Clone, Copy)]
enum Kind {
    /// Whitespace, a comment or a newline.
    Blank,
    TableOpen,
    TableClose,
    Key(Option<Encoding>),
    KeySep,
    KeyValSep,
    Scalar(Option<Encoding>),
    ArrayOpen,
    ArrayClose,
    ValueSep,
    /// Anything else: an array of tables, an inline table, an error.
    Other,
}

impl EventReceiver for Reader<'_> {
    fn std_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::TableOpen, span);
    }
    fn std_table_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::TableClose, span);
    }
    fn array_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::Other, span);
    }
    fn inline_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.on(Kind::Other, span);
        true
    }
    fn array_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.on(Kind::ArrayOpen, span);
        true
    }
    fn array_close(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::ArrayClose, span);
    }
    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _: &mut dyn ErrorSink) {
        self.on(Kind::Key(encoding), span);
    }
    fn key_sep(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::KeySep, span);
    }
    fn key_val_sep(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::KeyValSep, span);
    }
    fn scalar(&mut self, span: Span, encoding: Option<Encoding>, _: &mut dyn ErrorSink) {
        self.on(Kind::Scalar(encoding), span);
    }
    fn value_sep(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::ValueSep, span);
    }
    fn whitespace(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::Blank, span);
    }
    fn comment(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::Blank, span);
    }
    fn newline(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::Blank, span);
    }
    fn error(&mut self, span: Span, _: &mut dyn ErrorSink) {
        self.on(Kind::Other, span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde fills from the same text, spans included.
    /// `toml`'s reading, each key parsed as the plain reader parses it
    /// (`toml` leaves the text).
    fn through_toml(source: &str) -> Option<RawFile> {
        let mut file: RawFile = toml::from_str(source).ok()?;
        for guest in file.owners.values_mut().flat_map(|o| o.guests.values_mut()) {
            for key in &mut guest.keys {
                if let RawKey::Text(text) = key.get_ref() {
                    let parsed = parse_key(text);
                    *key.get_mut() = RawKey::Parsed(parsed);
                }
            }
        }
        Some(file)
    }

    /// Raw structures with every span spelled out (`Spanned` compares
    /// values only; its `Debug` shows spans too).
    fn spelled(file: &RawFile) -> String {
        format!("{file:#?}")
    }

    fn agrees(source: &str) -> bool {
        // Read line by line, where it is written as the CLI writes it: the
        // same as `toml`.
        if let Some(lines) = read_lines(source, 0) {
            let general = through_toml(source)
                .unwrap_or_else(|| panic!("read by lines, refused by toml: {source}"));
            assert_eq!(spelled(&lines.file), spelled(&general), "{source}");
        }
        // Read in two halves, split before any line starting with `[`: the
        // same as `toml`, or declined.
        for (newline, _) in source.match_indices("\n[") {
            if let Some(split) = read_split(source, newline + 1) {
                let general = through_toml(source)
                    .unwrap_or_else(|| panic!("split read a file toml refuses: {source}"));
                assert_eq!(spelled(&split), spelled(&general), "{source}");
            }
        }
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

    /// A guest's table given twice, with other tables between or not, is
    /// not read here (so `toml` reports it), by lines or by events.
    #[test]
    fn a_guest_table_given_twice_is_declined() {
        let guest = "[owners.alice.guests.bob]\nstatus = \"accepted\"\n";
        let other = "[owners.alice.guests.carol]\nstatus = \"left\"\n";
        for text in [
            format!("{guest}{guest}"),
            format!("{guest}{other}{guest}"),
            format!("[owners.alice]\nsharing = true\n{guest}{other}{guest}"),
            format!("{guest}# a comment: read by events\n{other}{guest}"),
        ] {
            assert!(read_lines(&text, 0).is_none(), "{text}");
            assert!(read(&text).is_none(), "{text}");
            assert!(through_toml(&text).is_none(), "{text}");
        }
    }

    /// A file of `guests` guests of alice, as the CLI writes it.
    fn written(guests: usize) -> String {
        let mut text = String::from("[owners.alice]\nsharing = true\n");
        for g in 0..guests {
            text.push_str(&format!(
                "\n[owners.alice.guests.g{g}]\nstatus = \"accepted\"\nkeys = [\"ssh-ed25519 AAAA{g} g{g}@laptop\"]\n"
            ));
        }
        text
    }

    #[test]
    fn a_large_file_is_read_in_halves_as_a_whole() {
        let text = written(20_000);
        assert!(text.len() >= crate::grant::model::LARGE_FILE_BYTES);
        let at = split_point(&text).expect("a split point");
        assert!(at > text.len() / 2 && text[at..].starts_with("[owners.alice.guests."));
        assert!(
            read_lines(&text, 0).is_some(),
            "the CLI's layout is read by lines"
        );
        let halves = read_split(&text, at).expect("read in halves");
        let whole = through_toml(&text).expect("toml reads it");
        assert_eq!(spelled(&halves), spelled(&whole));
        assert_eq!(
            halves.owners.values().next().map(|o| o.guests.len()),
            Some(20_000)
        );
        assert!(agrees(&written(3)));
    }

    #[test]
    fn a_split_inside_a_string_or_across_a_repeated_table_is_declined() {
        // The line starting with `[` is inside a multi-line string.
        let text =
            "[owners.alice.guests.bob]\nkeys = [\"\"\"k\n[owners.alice.guests.eve]\n\"\"\"]\n";
        let at = text.find("\n[owners.alice.guests.eve]").unwrap() + 1;
        assert!(read_split(text, at).is_none());
        assert!(agrees(text));
        // A table defined in both halves, or an owner's header after its
        // guests: `toml` refuses both and says where.
        for text in [
            "[owners.alice.guests.bob]\n[owners.alice.guests.bob]\n",
            "[owners.alice]\n[owners.alice]\n",
            "[owners.alice.guests.bob]\n[owners.alice]\n",
        ] {
            let at = text.rfind("\n[").unwrap() + 1;
            assert!(read_split(text, at).is_none(), "{text}");
            assert!(!agrees(text), "{text}");
        }
        // An owner in both halves, its header in the first: one owner.
        let text = "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\n";
        let at = text.rfind("\n[").unwrap() + 1;
        let file = read_split(text, at).expect("joined");
        assert!(file
            .owners
            .values()
            .all(|o| o.sharing && o.guests.len() == 1));
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

    #[test]
    fn a_plain_string_holds_no_quote_escape_or_control() {
        for good in ["", "abc", "ssh-ed25519 AAAA x@y", "é", "ü~ "] {
            assert_eq!(plain_string(&format!("\"{good}\"")), Some(good), "{good:?}");
        }
        for bad in ["a\"b", "a\\b", "\t", "\u{7f}", "\u{85}", "x\u{9f}", "\u{0}"] {
            assert_eq!(plain_string(&format!("\"{bad}\"")), None, "{bad:?}");
        }
        assert_eq!(plain_string("abc"), None);
    }

    proptest! {
        /// The line and item splitters are the standard library's.
        #[test]
        fn splitters_split_as_str_does(text in "[a-c\\n, é]{0,40}") {
            let lines: Vec<&str> = lines_inclusive(&text).collect();
            prop_assert_eq!(lines, text.split_inclusive('\n').collect::<Vec<_>>());
            let comma = memchr::memmem::Finder::new(", ");
            let items: Vec<&str> = split_on(&text, &comma).collect();
            prop_assert_eq!(items, text.split(", ").collect::<Vec<_>>());
        }
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
        let (mut read_plain, mut read_split_too, mut by_lines) = (0, 0, 0);
        for _ in 0..1_000 {
            let text = file().new_tree(&mut runner).unwrap().current();
            read_plain += usize::from(agrees(&text));
            by_lines += usize::from(read_lines(&text, 0).is_some());
            read_split_too += usize::from(
                text.match_indices("\n[")
                    .any(|(at, _)| read_split(&text, at + 1).is_some()),
            );
        }
        assert!(read_plain > 300, "only {read_plain} of 1,000 read plain");
        assert!(
            read_split_too > 100,
            "only {read_split_too} of 1,000 read in halves"
        );
        assert!(by_lines > 100, "only {by_lines} of 1,000 read by lines");
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
        "keys = [\"\"\"\n[owners.alice.guests.bob]\n\"\"\", 'k']\n",
        "keys = [\n[\"k\"]]\n",
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
