//! Applies a lifecycle change to the grant file: the text edit (toml_edit,
//! on the same TOML 1.1 parser as the reader; comments, order and layout
//! kept) and the one place that writes the file, under a lock, atomically.
//! The changes that end access never fail on a valid file: an owner's
//! table they cannot edit in place is written anew in the CLI's layout.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

use crate::grant::diag::{Diagnostic, FileErrors};
use crate::grant::lifecycle::{decide, decide_limits, Change, EditError, Layout, Model, Step};
use crate::grant::model::{Grants, GuestKey, Owner, Status, MAX_GRANT_FILE_BYTES};
use crate::grant::policy::Accounts;
use crate::store::source::{self, Outcome};
use crate::sys::fsutil;

/// How long an edit waits for another edit to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Mode of a grant file the CLI creates.
const NEW_FILE_MODE: u32 = 0o644;

/// What a new grant file starts with.
const NEW_FILE_HEADER: &str = "# Who may log in as whom on this VM. See vmshare(1).\n";

/// A change applied to grant file text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub text: String,
    /// One line saying what happened, for people.
    pub summary: String,
    /// `false` when the change was already in effect; `text` is then the
    /// input unchanged.
    pub changed: bool,
}

/// Applies `change` to grant file text, keeping comments, order and layout.
/// The text must be a valid grant file (as far as can be told without the
/// account database); so is the result.
pub fn apply(text: &str, change: &Change) -> Result<String, EditError> {
    apply_explained(text, change).map(|a| a.text)
}

/// [`apply`], with a summary of what it did.
pub fn apply_explained(text: &str, change: &Change) -> Result<Applied, EditError> {
    let grants = crate::grant::parse::parse(text).map_err(|errors| {
        EditError::InvalidFile(FileErrors {
            file: PathBuf::from("grant file"),
            errors,
        })
    })?;
    let (step, mut summary) = decide(&grants, change)?;
    let mut steps: Vec<Step> = step.into_iter().collect();
    if let Some((set, said)) = decide_limits(&grants, change) {
        summary = if steps.is_empty() {
            format!(
                "guest `{}` of owner `{}`: {said}",
                change.guest(),
                change.owner()
            )
        } else {
            format!("{summary}; {said}")
        };
        steps.push(set);
    }
    if steps.is_empty() {
        return Ok(Applied {
            text: text.to_string(),
            summary,
            changed: false,
        });
    }
    let owner = change.owner();
    let guest = change.guest();
    let mut expected = Model::of(&grants);
    for step in &steps {
        expected.apply(owner, guest, step);
    }
    let in_place = edit_text(text, owner, guest, &steps).and_then(|t| verified(t, &expected));
    let edited = match in_place {
        Ok(edited) => edited,
        // The verbs that end access must work on any file the agent
        // enforces: what cannot be edited in place is written anew.
        Err(EditError::Layout(why)) if change.ends_access() => {
            let Some(rewritten) = written_anew(text, &grants, change, &steps, &expected) else {
                return Err(EditError::Layout(why));
            };
            let rewritten = rewritten?;
            summary =
                format!("{summary}; rewrote owner {owner}'s table in vmshare's layout: {why}");
            rewritten
        }
        Err(e) => return Err(e),
    };
    Ok(Applied {
        text: edited,
        summary,
        changed: true,
    })
}

/// `edited` if it reads back as `expected`: the text edit must have done
/// exactly what was decided, whatever the file's layout.
fn verified(edited: String, expected: &Model) -> Result<String, EditError> {
    match crate::grant::parse::parse(&edited) {
        Ok(after) if Model::of(&after) == *expected => Ok(edited),
        _ => Err(layout(Layout::Misread)),
    }
}

fn layout(why: Layout) -> EditError {
    EditError::Layout(why)
}

fn unexpected(what: impl Into<String>, expected: &'static str) -> EditError {
    layout(Layout::Unexpected {
        what: what.into(),
        expected,
    })
}

/// `text` with the owner's table written anew as `steps` leave it, if it
/// reads back as `expected`; `None` for steps other than those of the
/// changes that end access.
fn written_anew(
    text: &str,
    grants: &Grants,
    change: &Change,
    steps: &[Step],
    expected: &Model,
) -> Option<Result<String, EditError>> {
    let after = owner_after(grants, change.owner(), change.guest(), steps)?;
    Some(rewrite_owner(text, &after).and_then(|t| verified(t, expected)))
}

/// Owner `owner` as `steps` leave it: the steps of the changes that end
/// access only (`None` for any other).
fn owner_after(grants: &Grants, owner: &str, guest: &str, steps: &[Step]) -> Option<Owner> {
    let mut after = grants.owner(owner)?.clone();
    for step in steps {
        match step {
            Step::SetSharing(on) => after.sharing = *on,
            Step::SetStatus(status) => {
                for g in after.guests.iter_mut().filter(|g| g.name == guest) {
                    g.status = *status;
                }
            }
            Step::RemoveGuest => after.guests.retain(|g| g.name != guest),
            Step::AddGuest { .. }
            | Step::AddKeys { .. }
            | Step::SetLimits(_)
            | Step::SetAdmin(_) => return None,
        }
    }
    Some(after)
}

/// `text` with `owner`'s table, however it is written (dotted keys, inline
/// tables, under `[owners]`), replaced by the tables the CLI writes
/// (`[owners.NAME]`, `[owners.NAME.guests.GUEST]`) at the end of the file;
/// the rest of the file as it was.
fn rewrite_owner(text: &str, owner: &Owner) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| layout(Layout::Unreadable(format!("{e}"))))?;
    let item = doc
        .as_table_mut()
        .get_mut("owners")
        .ok_or_else(|| layout(Layout::NotFound("the table of owners")))?;
    // A header cannot add to an inline table: the other owners stay inline,
    // under `[owners]`.
    if let Item::Value(Value::InlineTable(inline)) = item {
        let mut table = std::mem::take(inline).into_table();
        table.set_implicit(true);
        *item = Item::Table(table);
    }
    let owners = item
        .as_table_mut()
        .ok_or_else(|| unexpected("`owners`", "a table"))?;
    owners.remove(&owner.name);
    owners.insert(&owner.name, owner_tables(owner, !text.trim().is_empty()));
    Ok(doc.to_string())
}

/// An owner's tables in the CLI's layout, placed after every other table.
fn owner_tables(owner: &Owner, spaced: bool) -> Item {
    let last = |t: &mut Table| {
        t.set_position(Some(isize::MAX));
        if spaced {
            t.decor_mut().set_prefix("\n");
        }
    };
    let mut table = Table::new();
    last(&mut table);
    table.insert("sharing", toml_edit::value(owner.sharing));
    let mut guests = Table::new();
    guests.set_implicit(true);
    for g in &owner.guests {
        let mut t = Table::new();
        last(&mut t);
        t.insert("status", toml_edit::value(g.status.as_str()));
        let keys: Vec<String> = g.keys.iter().map(key_line).collect();
        t.insert("keys", Item::Value(Value::Array(multiline_array(&keys))));
        if g.admin {
            t.insert("admin", toml_edit::value(true));
        }
        // A value that cannot be written reads back different, and the
        // rewrite is refused.
        if let Some(at) = g.limits.expires {
            if let Ok(when) = crate::grant::civil::utc(at).parse::<toml_edit::Datetime>() {
                t.insert("expires", toml_edit::value(when));
            }
        }
        if let Some(nets) = &g.limits.from {
            let list: Array = nets.iter().map(|n| n.to_string()).collect();
            t.insert("from", Item::Value(Value::Array(list)));
        }
        if !g.limits.forwarding {
            t.insert("forwarding", toml_edit::value(false));
        }
        guests.insert(&g.name, Item::Table(t));
    }
    table.insert("guests", Item::Table(guests));
    Item::Table(table)
}

/// A key as the grant file writes it: `type base64 [comment]`.
fn key_line(key: &GuestKey) -> String {
    if key.comment.is_empty() {
        format!("{} {}", key.algorithm, key.blob)
    } else {
        format!("{} {} {}", key.algorithm, key.blob, key.comment)
    }
}

/// Makes the text edit for `steps`, in order.
fn edit_text(text: &str, owner: &str, guest: &str, steps: &[Step]) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| layout(Layout::Unreadable(format!("{e}"))))?;
    // New tables get a blank line before them, unless they open the file.
    let spaced = !text.trim().is_empty();
    // In a file of comments only, the comments are the document's trailing
    // text, which would end up below new tables: keep them on top.
    if doc.as_table().is_empty() {
        let trailing = raw_str(Some(doc.trailing()));
        if !trailing.is_empty() {
            doc.as_table_mut().decor_mut().set_prefix(trailing);
            doc.set_trailing("");
        }
    }
    for step in steps {
        let owners = child(doc.as_item_mut(), "owners", container)?;
        edit_step(owners, owner, guest, step, spaced)?;
    }
    Ok(doc.to_string())
}

/// One step of [`edit_text`] on the `owners` table.
fn edit_step(
    owners: &mut Item,
    owner: &str,
    guest: &str,
    step: &Step,
    spaced: bool,
) -> Result<(), EditError> {
    match step {
        Step::SetSharing(on) => {
            let o = child(owners, owner, |inline| owner_table(inline, spaced, *on))?;
            set_value(o, "sharing", Value::from(*on))?;
        }
        Step::AddGuest { keys } => {
            let o = child(owners, owner, |inline| owner_table(inline, spaced, false))?;
            let guests = child(o, "guests", container)?;
            let inline = guests.is_inline_table();
            let table = guests
                .as_table_like_mut()
                .ok_or_else(|| unexpected("`guests`", "a table"))?;
            let new = if inline {
                let mut t = InlineTable::new();
                t.insert("status", Value::from(Status::Invited.as_str()));
                t.insert("keys", Value::Array(keys.iter().collect()));
                Item::Value(Value::InlineTable(t))
            } else {
                let mut t = Table::new();
                if spaced {
                    t.decor_mut().set_prefix("\n");
                }
                t.insert("status", toml_edit::value(Status::Invited.as_str()));
                t.insert("keys", Item::Value(Value::Array(multiline_array(keys))));
                Item::Table(t)
            };
            table.insert(guest, new);
        }
        Step::AddKeys { keys, status } => {
            let g = guest_item(owners, owner, guest)?;
            add_keys(g, keys)?;
            if let Some(s) = status {
                set_value(g, "status", Value::from(s.as_str()))?;
            }
        }
        Step::SetStatus(s) => {
            let g = guest_item(owners, owner, guest)?;
            set_value(g, "status", Value::from(s.as_str()))?;
        }
        Step::SetAdmin(on) => {
            let g = guest_item(owners, owner, guest)?;
            set_value(g, "admin", Value::from(*on))?;
        }
        Step::RemoveGuest => {
            let o = owners
                .as_table_like_mut()
                .and_then(|t| t.get_mut(owner))
                .ok_or_else(|| layout(Layout::NotFound("the owner's table")))?;
            let guests = o
                .as_table_like_mut()
                .and_then(|t| t.get_mut("guests"))
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| layout(Layout::NotFound("the table of guests")))?;
            guests
                .remove(guest)
                .ok_or_else(|| layout(Layout::NotFound("the guest's table")))?;
        }
        Step::SetLimits(set) => {
            let g = guest_item(owners, owner, guest)?;
            if let Some(at) = set.expires {
                let when: toml_edit::Datetime = crate::grant::civil::utc(at)
                    .parse()
                    .map_err(|e| unexpected(format!("`expires` ({e})"), "a date-time"))?;
                set_value(g, "expires", Value::from(when))?;
            }
            if let Some(nets) = &set.from {
                let list: Array = nets.iter().map(|n| n.to_string()).collect();
                set_value(g, "from", Value::Array(list))?;
            }
            if set.no_forwarding {
                set_value(g, "forwarding", Value::from(false))?;
            }
        }
    }
    Ok(())
}

/// `parent[key]`, created with `new(parent_is_inline)` when absent.
fn child<'a>(
    parent: &'a mut Item,
    key: &str,
    new: impl FnOnce(bool) -> Item,
) -> Result<&'a mut Item, EditError> {
    let inline = parent.is_inline_table();
    let table = parent
        .as_table_like_mut()
        .ok_or_else(|| unexpected(format!("the parent of `{key}`"), "a table"))?;
    if !table.contains_key(key) {
        table.insert(key, new(inline));
    }
    let item = table
        .get_mut(key)
        .ok_or_else(|| layout(Layout::NotFound("a table just added")))?;
    if item.is_table_like() {
        Ok(item)
    } else {
        Err(unexpected(format!("`{key}`"), "a table"))
    }
}

/// A table that only holds other tables.
fn container(inline: bool) -> Item {
    if inline {
        Item::Value(Value::InlineTable(InlineTable::new()))
    } else {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    }
}

fn owner_table(inline: bool, spaced: bool, sharing: bool) -> Item {
    if inline {
        let mut t = InlineTable::new();
        t.insert("sharing", Value::from(sharing));
        Item::Value(Value::InlineTable(t))
    } else {
        let mut t = Table::new();
        if spaced {
            t.decor_mut().set_prefix("\n");
        }
        t.insert("sharing", toml_edit::value(sharing));
        Item::Table(t)
    }
}

fn guest_item<'a>(
    owners: &'a mut Item,
    owner: &str,
    guest: &str,
) -> Result<&'a mut Item, EditError> {
    owners
        .as_table_like_mut()
        .and_then(|t| t.get_mut(owner))
        .and_then(Item::as_table_like_mut)
        .and_then(|t| t.get_mut("guests"))
        .and_then(Item::as_table_like_mut)
        .and_then(|t| t.get_mut(guest))
        .filter(|i| i.is_table_like())
        .ok_or_else(|| layout(Layout::NotFound("the guest's table")))
}

/// Sets `table[key] = value`, keeping the old value's surrounding spaces and
/// trailing comment.
fn set_value(table: &mut Item, key: &str, mut value: Value) -> Result<(), EditError> {
    let t = table
        .as_table_like_mut()
        .ok_or_else(|| unexpected(format!("the table of `{key}`"), "a table"))?;
    if let Some(old) = t.get_mut(key) {
        let old = old
            .as_value_mut()
            .ok_or_else(|| unexpected(format!("`{key}`"), "a value"))?;
        *value.decor_mut() = old.decor().clone();
        *old = value;
    } else {
        t.insert(key, Item::Value(value));
    }
    Ok(())
}

/// An array with one element a line, the way the grant file example
/// writes keys.
fn multiline_array(items: &[String]) -> Array {
    let mut array = Array::new();
    for item in items {
        let mut v = Value::from(item.as_str());
        v.decor_mut().set_prefix("\n  ");
        v.decor_mut().set_suffix("");
        array.push_formatted(v);
    }
    array.set_trailing_comma(true);
    array.set_trailing("\n");
    array
}

fn raw_str(raw: Option<&toml_edit::RawString>) -> String {
    raw.and_then(|r| r.as_str()).unwrap_or("").to_string()
}

/// Appends keys to a guest's `keys`, in the array's own style: one a line
/// if it is written that way, with a comment after the last key staying
/// with that key.
fn add_keys(guest: &mut Item, keys: &[String]) -> Result<(), EditError> {
    let inline = guest.is_inline_table();
    let t = guest
        .as_table_like_mut()
        .ok_or_else(|| unexpected("the guest", "a table"))?;
    if !t.contains_key("keys") {
        let array = if inline {
            keys.iter().collect()
        } else {
            multiline_array(keys)
        };
        t.insert("keys", Item::Value(Value::Array(array)));
        return Ok(());
    }
    let array = t
        .get_mut("keys")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| unexpected("`keys`", "an array"))?;
    let first_prefix = array
        .get(0)
        .map(|v| raw_str(v.decor().prefix()))
        .unwrap_or_default();
    if !first_prefix.contains('\n') {
        for key in keys {
            array.push(key.as_str());
        }
        return Ok(());
    }
    let indent = first_prefix
        .rsplit_once('\n')
        .map_or("", |(_, after)| after)
        .to_string();
    // What stands between the last element and `]`: the array's trailing
    // part after a trailing comma, else the last element's suffix.
    let trailing_comma = array.trailing_comma();
    let closing = if trailing_comma {
        raw_str(Some(array.trailing()))
    } else {
        let last = array.len() - 1;
        array
            .get(last)
            .map(|v| raw_str(v.decor().suffix()))
            .unwrap_or_default()
    };
    let (head, tail) = match closing.rsplit_once('\n') {
        Some((head, tail)) => (format!("{head}\n"), tail.to_string()),
        None => ("\n".to_string(), closing.clone()),
    };
    let rest_closing = if closing.contains('\n') {
        format!("\n{tail}")
    } else {
        closing.clone()
    };
    if !trailing_comma {
        let last = array.len() - 1;
        if let Some(v) = array.get_mut(last) {
            v.decor_mut().set_suffix("");
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let mut v = Value::from(key.as_str());
        let prefix = if i == 0 {
            format!("{head}{indent}")
        } else {
            format!("\n{indent}")
        };
        v.decor_mut().set_prefix(prefix);
        v.decor_mut().set_suffix("");
        array.push_formatted(v);
    }
    if trailing_comma {
        array.set_trailing(rest_closing);
    } else {
        let last = array.len() - 1;
        if let Some(v) = array.get_mut(last) {
            v.decor_mut().set_suffix(rest_closing);
        }
    }
    Ok(())
}

/// What an edit of the file on disk did.
#[derive(Debug, Clone)]
pub struct Edited {
    pub summary: String,
    pub changed: bool,
    /// Findings about the edited file that do not invalidate it.
    pub notes: Vec<Diagnostic>,
}

/// The lock file that serializes edits of the grant file at `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(
        || "grants.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!(".{name}.lock"))
}

/// Takes the edit lock, waiting up to `wait`.
fn lock(path: &Path, wait: Duration) -> Result<Flock<File>, EditError> {
    let lock_path = lock_path(path);
    fsutil::lock_exclusive(&lock_path, wait).map_err(|e| match e {
        fsutil::LockError::Busy => EditError::Busy {
            lock: lock_path,
            waited: wait,
        },
        fsutil::LockError::Failed(why) => EditError::Lock(why),
    })
}

/// Applies `change` to the grant file at `path`: under the edit lock, reads
/// the file (strictly), refuses if it is invalid now or would be after, and
/// replaces it atomically, keeping its mode and owner. A missing file is
/// created (root:root, 0644).
pub fn edit_file(
    path: &Path,
    change: &Change,
    accounts: &dyn Accounts,
) -> Result<Edited, EditError> {
    edit_file_within(path, change, accounts, LOCK_TIMEOUT)
}

/// [`edit_file`], waiting at most `wait` for another edit to finish
/// ([`EditError::Busy`] then).
pub fn edit_file_within(
    path: &Path,
    change: &Change,
    accounts: &dyn Accounts,
    wait: Duration,
) -> Result<Edited, EditError> {
    let owner = change.owner();
    crate::grant::parse::check_owner_name(owner).map_err(EditError::BadOwnerName)?;
    match accounts.lookup(owner) {
        Ok(Some(account)) if account.uid == 0 => {
            return Err(EditError::RootOwner(owner.to_string()))
        }
        Ok(Some(_)) => {}
        Ok(None) if change.may_add_owner() => {
            return Err(EditError::NotLocalAccount(owner.to_string()))
        }
        Ok(None) => {}
        Err(e) => return Err(EditError::Io(e)),
    }

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(EditError::Io(format!(
                "directory {} does not exist; create it (root:root, 0755)",
                dir.display()
            )));
        }
    }
    let _lock = lock(path, wait)?;
    let current =
        fsutil::read_strict(path, MAX_GRANT_FILE_BYTES as u64).map_err(EditError::Unreadable)?;
    let (text, target, mode, ids) = match current {
        Some((text, meta)) => {
            let loaded = source::load_text(path, text.clone(), accounts);
            if let Outcome::Invalid(errors) = loaded.outcome {
                return Err(EditError::InvalidFile(errors));
            }
            // Replace the file itself, not a symlink to it.
            let target = std::fs::canonicalize(path)
                .map_err(|e| EditError::Io(format!("{}: {e}", path.display())))?;
            (text, target, meta.mode() & 0o7777, (meta.uid(), meta.gid()))
        }
        None => {
            fsutil::check_trusted_dirs(path).map_err(EditError::Unreadable)?;
            (
                NEW_FILE_HEADER.to_string(),
                path.to_path_buf(),
                NEW_FILE_MODE,
                (0, 0),
            )
        }
    };
    let applied = apply_explained(&text, change).map_err(|e| match e {
        EditError::InvalidFile(errors) => EditError::InvalidFile(FileErrors {
            file: path.to_path_buf(),
            ..errors
        }),
        EditError::ResultInvalid(errors) => EditError::ResultInvalid(FileErrors {
            file: path.to_path_buf(),
            ..errors
        }),
        other => other,
    })?;
    if !applied.changed {
        return Ok(Edited {
            summary: applied.summary,
            changed: false,
            notes: Vec::new(),
        });
    }
    let loaded = source::load_text(path, applied.text.clone(), accounts);
    let notes = match loaded.outcome {
        Outcome::Invalid(errors) => return Err(EditError::ResultInvalid(errors)),
        Outcome::Missing => Vec::new(),
        Outcome::Valid { policy, .. } => policy.notes,
    };
    fsutil::atomic_write(&target, applied.text.as_bytes(), mode, Some(ids))
        .map_err(|e| io_error(&target, e))?;
    Ok(Edited {
        summary: applied.summary,
        changed: true,
        notes,
    })
}

fn io_error(path: &Path, e: io::Error) -> EditError {
    EditError::Io(format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::lifecycle::SetLimits;
    use crate::grant::parse::tests::{KEY_A, KEY_B};

    const KEY_C: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGlydGVzdGtleWNjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj c@z";

    fn invite(owner: &str, guest: &str, keys: &[&str]) -> Change {
        Change::Invite {
            owner: owner.into(),
            guest: guest.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            limits: SetLimits::default(),
        }
    }

    fn accept(guest: &str) -> Change {
        Change::Accept {
            owner: "alice".into(),
            guest: guest.into(),
            limits: SetLimits::default(),
        }
    }

    fn limits_of(text: &str, guest: &str) -> crate::grant::limits::Limits {
        let g = crate::grant::parse::parse(text).expect("valid");
        g.owner("alice")
            .unwrap()
            .guest(guest)
            .unwrap()
            .limits
            .clone()
    }

    #[test]
    fn limits_are_set_with_an_invitation_an_acceptance_or_extend() {
        let set = SetLimits {
            expires: Some(1_796_148_000),
            from: Some(vec![
                "203.0.113.0/24".parse().unwrap(),
                "::1".parse().unwrap(),
            ]),
            no_forwarding: true,
        };
        let invited = apply_explained(
            NEW_FILE_HEADER,
            &Change::Invite {
                owner: "alice".into(),
                guest: "bob".into(),
                keys: vec![KEY_A.into()],
                limits: set.clone(),
            },
        )
        .unwrap();
        assert!(
            invited.summary.contains("expires 2026-12-01T18:00:00Z"),
            "{}",
            invited.summary
        );
        assert!(
            invited.text.contains("expires = 2026-12-01T18:00:00Z\nfrom = [\"203.0.113.0/24\", \"::1\"]\nforwarding = false\n"),
            "{}",
            invited.text
        );
        let l = limits_of(&invited.text, "bob");
        assert_eq!(l.expires, Some(1_796_148_000));
        assert!(!l.forwarding);
        // Accepting with the same limits changes the status only; with
        // others, those too; the rest of the file stays.
        let text = format!("# keep me\n{}", invited.text);
        let accepted = apply(
            &text,
            &Change::Accept {
                owner: "alice".into(),
                guest: "bob".into(),
                limits: SetLimits {
                    expires: Some(1_796_151_600),
                    ..SetLimits::default()
                },
            },
        )
        .unwrap();
        assert!(accepted.starts_with("# keep me\n"));
        assert_eq!(status_of(&accepted, "alice", "bob"), Some(Status::Accepted));
        assert_eq!(limits_of(&accepted, "bob").expires, Some(1_796_151_600));
        assert_eq!(limits_of(&accepted, "bob").from, l.from);
        let extend = |at| Change::Extend {
            owner: "alice".into(),
            guest: "bob".into(),
            expires: at,
        };
        let extended = apply_explained(&accepted, &extend(1_900_000_000)).unwrap();
        assert!(extended.changed);
        assert_eq!(
            limits_of(&extended.text, "bob").expires,
            Some(1_900_000_000)
        );
        assert!(
            !apply_explained(&extended.text, &extend(1_900_000_000))
                .unwrap()
                .changed
        );
        let never = apply_explained(
            &extended.text,
            &Change::Extend {
                owner: "alice".into(),
                guest: "nobody".into(),
                expires: 1,
            },
        );
        assert!(matches!(never, Err(EditError::NotAGuest { .. })));
        // An inline guest table gets inline values.
        let inline = format!("[owners.alice]\nguests.bob = {{ keys = [\"{KEY_A}\"] }}\n");
        let done = apply(&inline, &extend(1_900_000_000)).unwrap();
        assert!(done.contains("expires = 2030-03-17T17:46:40Z }"), "{done}");
    }

    fn status_of(text: &str, owner: &str, guest: &str) -> Option<Status> {
        let g = crate::grant::parse::parse(text).expect("valid");
        g.owner(owner)?.guest(guest).map(|g| g.status)
    }

    const HAND_WRITTEN: &str = r#"# Our grants. Keep this comment.

[owners.alice]   # the owner
sharing = true

# bob is a friend
[owners.alice.guests.bob]
keys = [
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGg3Nt1a6dCd8L2F3A0nbpXK1jMo0d3nT3tJ8NQd3uBs a@x", # laptop
]
status = "invited"   # until he says yes

[owners.alice.guests.carol]
status = "accepted"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF1hwYoxm+6UfuvTLRSqj2A0s7bF1hCz3wXlpY0R3aVQ b@y"]
"#;

    #[test]
    fn invite_into_an_empty_file_writes_the_documented_layout() {
        let text = apply("", &invite("alice", "bob", &[KEY_A])).unwrap();
        assert_eq!(
            text,
            format!(
                "[owners.alice]\nsharing = false\n\n[owners.alice.guests.bob]\nstatus = \"invited\"\nkeys = [\n  \"{KEY_A}\",\n]\n"
            )
        );
        let text = apply(
            &text,
            &Change::Sharing {
                owner: "alice".into(),
                on: true,
            },
        )
        .unwrap();
        assert!(
            text.starts_with("[owners.alice]\nsharing = true\n"),
            "{text}"
        );
    }

    #[test]
    fn comments_of_a_file_without_tables_stay_on_top() {
        let text = apply(
            NEW_FILE_HEADER,
            &Change::Sharing {
                owner: "alice".into(),
                on: true,
            },
        )
        .unwrap();
        assert_eq!(
            text,
            format!("{NEW_FILE_HEADER}\n[owners.alice]\nsharing = true\n")
        );
    }

    #[test]
    fn accept_keeps_comments_order_and_trailing_comment() {
        let text = apply(HAND_WRITTEN, &accept("bob")).unwrap();
        assert_eq!(
            text,
            HAND_WRITTEN.replace(
                "status = \"invited\"   # until he says yes",
                "status = \"accepted\"   # until he says yes"
            )
        );
    }

    #[test]
    fn admin_is_set_next_to_the_status_and_repeating_it_changes_nothing() {
        let admin = |guest: &str, on: bool| Change::Admin {
            owner: "alice".into(),
            guest: guest.into(),
            on,
        };
        let text = apply(HAND_WRITTEN, &admin("carol", true)).unwrap();
        assert!(text.ends_with("b@y\"]\nadmin = true\n"), "{text}");
        let g = crate::grant::parse::parse(&text).unwrap();
        assert!(g.owner("alice").unwrap().guest("carol").unwrap().admin);
        let again = apply_explained(&text, &admin("carol", true)).unwrap();
        assert!(!again.changed && again.summary.starts_with("unchanged"));
        let off = apply(&text, &admin("carol", false)).unwrap();
        assert!(off.ends_with("admin = false\n"), "{off}");
        assert!(matches!(
            apply_explained(HAND_WRITTEN, &admin("dave", true)),
            Err(EditError::NotAGuest { .. })
        ));
    }

    #[test]
    fn adding_a_key_follows_the_array_style() {
        let text = apply(HAND_WRITTEN, &invite("alice", "bob", &[KEY_C])).unwrap();
        assert!(
            text.contains(&format!(
                "keys = [\n  \"{KEY_A}\", # laptop\n  \"{KEY_C}\",\n]\nstatus = \"invited\"   # until he says yes\n"
            )),
            "{text}"
        );
        let text = apply(HAND_WRITTEN, &invite("alice", "carol", &[KEY_C])).unwrap();
        assert!(
            text.contains(&format!("keys = [\"{KEY_B}\", \"{KEY_C}\"]\n")),
            "{text}"
        );
        // Without a trailing comma.
        let src = format!("[owners.alice.guests.bob]\nkeys = [\n    \"{KEY_A}\"\n]\n");
        let text = apply(&src, &invite("alice", "bob", &[KEY_C])).unwrap();
        assert_eq!(
            text,
            format!("[owners.alice.guests.bob]\nkeys = [\n    \"{KEY_A}\",\n    \"{KEY_C}\"\n]\n")
        );
    }

    #[test]
    fn new_guest_goes_after_the_owners_other_guests() {
        let text = apply(HAND_WRITTEN, &invite("alice", "dave", &[KEY_C])).unwrap();
        assert!(text.starts_with(HAND_WRITTEN), "{text}");
        assert!(text.ends_with(&format!(
            "\n[owners.alice.guests.dave]\nstatus = \"invited\"\nkeys = [\n  \"{KEY_C}\",\n]\n"
        )));
    }

    #[test]
    fn revoke_removes_only_that_guest() {
        let text = apply(
            HAND_WRITTEN,
            &Change::Revoke {
                owner: "alice".into(),
                guest: "bob".into(),
            },
        )
        .unwrap();
        assert!(!text.contains("guests.bob"));
        assert!(
            text.starts_with("# Our grants. Keep this comment.\n\n[owners.alice]   # the owner\n")
        );
        assert_eq!(status_of(&text, "alice", "carol"), Some(Status::Accepted));
        assert_eq!(status_of(&text, "alice", "bob"), None);
    }

    #[test]
    fn lifecycle_transitions() {
        let mut text = apply("", &invite("alice", "bob", &[KEY_A])).unwrap();
        let leave = Change::Leave {
            owner: "alice".into(),
            guest: "bob".into(),
        };
        let reject = Change::Reject {
            owner: "alice".into(),
            guest: "bob".into(),
        };
        // leave before accepting is refused
        assert!(matches!(
            apply(&text, &leave),
            Err(EditError::Transition { .. })
        ));
        text = apply(&text, &accept("bob")).unwrap();
        assert_eq!(status_of(&text, "alice", "bob"), Some(Status::Accepted));
        // accepting twice changes nothing
        let again = apply_explained(&text, &accept("bob")).unwrap();
        assert!(!again.changed);
        assert_eq!(again.text, text);
        assert!(matches!(
            apply(&text, &reject),
            Err(EditError::Transition { .. })
        ));
        text = apply(&text, &leave).unwrap();
        assert_eq!(status_of(&text, "alice", "bob"), Some(Status::Left));
        // a guest who left must be invited again
        let e = apply(&text, &accept("bob")).unwrap_err();
        assert!(e.to_string().contains("invite them again"), "{e}");
        text = apply(&text, &invite("alice", "bob", &[KEY_A])).unwrap();
        assert_eq!(status_of(&text, "alice", "bob"), Some(Status::Invited));
        text = apply(&text, &reject).unwrap();
        assert_eq!(status_of(&text, "alice", "bob"), Some(Status::Rejected));
        assert!(matches!(
            apply(&text, &accept("bob")),
            Err(EditError::Transition { .. })
        ));
    }

    #[test]
    fn refusals() {
        let never = apply(HAND_WRITTEN, &accept("zed")).unwrap_err();
        assert!(matches!(never, EditError::NotAGuest { .. }), "{never}");
        let owner = apply(
            HAND_WRITTEN,
            &Change::Reject {
                owner: "nobody".into(),
                guest: "bob".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(owner, EditError::UnknownOwner(_)), "{owner}");
        let bad = apply(
            HAND_WRITTEN,
            &invite("alice", "dave", &["ssh-ed25519 AAAAjunk"]),
        )
        .unwrap_err();
        assert!(matches!(bad, EditError::BadKey { .. }), "{bad}");
        let opts = apply(
            HAND_WRITTEN,
            &invite("alice", "dave", &[&format!("command=\"/bin/sh\" {KEY_C}")]),
        )
        .unwrap_err();
        assert!(matches!(opts, EditError::BadKey { .. }), "{opts}");
        let taken = apply(HAND_WRITTEN, &invite("alice", "dave", &[KEY_B])).unwrap_err();
        assert!(
            taken
                .to_string()
                .contains("already belongs to guest `carol`"),
            "{taken}"
        );
        assert!(matches!(
            apply(HAND_WRITTEN, &invite("alice", "Dave", &[KEY_C])),
            Err(EditError::BadGuestName(_))
        ));
        assert!(matches!(
            apply(HAND_WRITTEN, &invite("alice", "dave", &[])),
            Err(EditError::NoKeys)
        ));
        assert!(matches!(
            apply("[owners.alice]\nstauts = 1\n", &accept("bob")),
            Err(EditError::InvalidFile(_))
        ));
    }

    #[test]
    fn same_key_twice_is_added_once_and_comment_kept() {
        let text = apply(
            "",
            &invite("alice", "bob", &[KEY_A, &format!("  {KEY_A}  ")]),
        )
        .unwrap();
        assert_eq!(text.matches("AAAAC3NzaC1lZDI1NTE5AAAAIGg3").count(), 1);
        assert!(text.contains(" a@x\""));
        let same = apply_explained(&text, &invite("alice", "bob", &[KEY_A])).unwrap();
        assert!(!same.changed);
    }

    #[test]
    fn other_layouts_are_edited_or_refused_never_misedited() {
        let layouts = [
            format!("[owners]\nalice.sharing = true\nalice.guests.bob.keys = [\"{KEY_A}\"]\n"),
            format!("[owners.alice]\nsharing = true\nguests = {{ bob = {{ keys = [\"{KEY_A}\"] }} }}\n"),
            format!("owners = {{ alice = {{ sharing = true, guests = {{ bob = {{ keys = [\"{KEY_A}\"] }} }} }} }}\n"),
            format!("[owners.alice.guests]\nbob = {{ status = \"invited\", keys = [\"{KEY_A}\"] }}\n"),
        ];
        let changes = [
            accept("bob"),
            Change::Admin {
                owner: "alice".into(),
                guest: "bob".into(),
                on: true,
            },
            invite("alice", "bob", &[KEY_C]),
            invite("alice", "dave", &[KEY_C]),
            Change::Revoke {
                owner: "alice".into(),
                guest: "bob".into(),
            },
            Change::Sharing {
                owner: "alice".into(),
                on: false,
            },
            Change::Sharing {
                owner: "erin".into(),
                on: true,
            },
            invite("erin", "dave", &[KEY_C]),
        ];
        for src in &layouts {
            crate::grant::parse::parse(src).expect("layout is valid");
            for change in &changes {
                match apply(src, change) {
                    Ok(text) => {
                        crate::grant::parse::parse(&text)
                            .unwrap_or_else(|e| panic!("{src}{change:?}\n{text}\n{e:?}"));
                    }
                    Err(EditError::Layout(_)) => {}
                    Err(e) => panic!("{src}\n{change:?}: {e}"),
                }
            }
        }
    }

    /// Revoke, sharing off and leave, for alice's guest bob.
    fn ending_bobs_access() -> [Change; 3] {
        let (owner, guest) = (String::from("alice"), String::from("bob"));
        [
            Change::Revoke {
                owner: owner.clone(),
                guest: guest.clone(),
            },
            Change::Sharing {
                owner: owner.clone(),
                on: false,
            },
            Change::Leave { owner, guest },
        ]
    }

    /// The layouts a hand-written file may use, each with alice's accepted
    /// guest bob (and two more guests) and another owner, carol.
    fn layouts() -> Vec<String> {
        let bob =
            format!("status = \"accepted\", keys = [\"{KEY_A}\"], expires = 2030-01-01T00:00Z");
        let eve = format!("status = \"acc\\x65pted\", keys = [\"{KEY_B}\"], from = [\"10.0.0.0/8\"], forwarding = false, admin = true");
        let zed = format!("keys = [\"{KEY_C}\"]");
        let carol = format!("[owners.carol]  # keep\nsharing = true\n\n[owners.carol.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n");
        vec![
            format!("# top\n[owners]\nalice.sharing = true\nalice.guests.bob = {{ {bob} }}\nalice.guests.eve = {{ {eve} }}\nalice.guests.\"z.e-d\" = {{ {zed} }}\n\n{carol}"),
            format!("[owners.alice]\nsharing = true\nguests = {{ bob = {{ {bob} }}, eve = {{ {eve} }}, \"z.e-d\" = {{ {zed} }} }}\n\n{carol}"),
            format!("# all inline\nowners = {{\n  alice = {{ sharing = true, guests = {{ bob = {{ {bob} }}, eve = {{ {eve} }}, \"z.e-d\" = {{ {zed} }} }} }},\n  carol = {{ sharing = true }},\n}}\n"),
            format!("owners.alice.sharing = true\nowners.alice.guests.bob = {{\n  {bob},\n}}\nowners.alice.guests.eve = {{ {eve} }}\nowners.alice.guests.\"z.e-d\" = {{ {zed} }}\n{carol}"),
            format!("{carol}\n[owners.alice.guests]\nbob = {{ {bob} }}\neve = {{ {eve} }}\n\"z.e-d\" = {{ {zed} }}\n[owners.alice]\nsharing = true\n"),
        ]
    }

    #[test]
    fn an_owner_written_anew_means_what_was_intended_and_the_rest_stays() {
        for src in layouts() {
            let grants =
                crate::grant::parse::parse(&src).unwrap_or_else(|e| panic!("{src}\n{e:?}"));
            for change in &ending_bobs_access() {
                let (step, _) = decide(&grants, change).unwrap();
                let steps: Vec<Step> = step.into_iter().collect();
                let mut expected = Model::of(&grants);
                for step in &steps {
                    expected.apply("alice", change.guest(), step);
                }
                let text = written_anew(&src, &grants, change, &steps, &expected)
                    .expect("a change that ends access")
                    .unwrap_or_else(|e| panic!("{src}\n{change:?}: {e}"));
                // alice in the CLI's layout, at the end; carol as she was.
                let at = text
                    .find("\n[owners.alice]\nsharing = ")
                    .unwrap_or_else(|| panic!("{text}"));
                assert!(!text[..at].contains("alice"), "{text}");
                assert!(text[at..].contains("\n[owners.alice.guests.eve]\nstatus = \"accepted\"\nkeys = [\n  \"ssh-ed25519 "), "{text}");
                assert!(
                    text[at..]
                        .contains("\n[owners.alice.guests.\"z.e-d\"]\nstatus = \"invited\"\n"),
                    "{text}"
                );
                let after = crate::grant::parse::parse(&text).unwrap();
                assert_eq!(
                    after.owner("carol"),
                    grants
                        .owner("carol")
                        .map(|c| Owner {
                            offset: after.owner("carol").unwrap().offset,
                            ..c.clone()
                        })
                        .as_ref()
                );
                if src.starts_with('#') {
                    assert!(
                        text.starts_with("# top\n") || text.starts_with("# all inline\n[owners]\n"),
                        "{text}"
                    );
                }
                if src.contains("[owners.carol]  # keep") {
                    assert!(
                        text.contains("[owners.carol]  # keep\nsharing = true\n"),
                        "{text}"
                    );
                }
                // Key comments are kept.
                let kept = text[at..].contains(" a@x\"");
                assert_eq!(kept, !matches!(change, Change::Revoke { .. }), "{text}");
            }
        }
        // Changes that do not end access are never written anew.
        let src = &layouts()[0];
        let grants = crate::grant::parse::parse(src).unwrap();
        let steps = [Step::SetAdmin(true)];
        assert!(written_anew(src, &grants, &accept("bob"), &steps, &Model::of(&grants)).is_none());
    }

    #[test]
    fn files_of_toml_1_1_are_edited() {
        let files = [
            format!("[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"acc\\x65pted\"\nkeys = [\"{KEY_A}\"]\n"),
            format!("[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nexpires = 2030-01-01T00:00Z\nkeys = [\"{KEY_A}\"]\n"),
            format!("[owners.alice]\nsharing = true\n[owners.alice.guests]\nbob = {{\n  status = \"accepted\",\n  keys = [\"{KEY_A}\"],\n}}\n"),
        ];
        for src in &files {
            let more = [
                Change::Admin {
                    owner: "alice".into(),
                    guest: "bob".into(),
                    on: true,
                },
                invite("alice", "carol", &[KEY_C]),
            ];
            for change in ending_bobs_access().into_iter().chain(more) {
                let done = apply_explained(src, &change)
                    .unwrap_or_else(|e| panic!("{src}{change:?}: {e}"));
                assert!(
                    done.changed && !done.summary.contains("rewrote"),
                    "{}",
                    done.summary
                );
            }
        }
    }
}
