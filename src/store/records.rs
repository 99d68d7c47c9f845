//! Session records: one small JSON file per live guest session in
//! `<run_dir>/sessions/`, written by the PAM hook, read by the daemon and
//! the CLI. Everything needed to end the session is in the record, so a
//! restarted daemon loses nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sys::fsutil;

/// One live guest session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredRecord")]
pub struct SessionRecord {
    /// Unique id: also the record's file name and the cgroup's name.
    pub id: String,
    pub owner: String,
    pub guest: String,
    /// The authenticating key, `SHA256:…`.
    pub fingerprint: String,
    /// The key blob, to re-check the grant by key, not only by guest name.
    pub key_algorithm: String,
    pub key_blob: String,
    /// Remote address as sshd reported it (`PAM_RHOST`).
    pub remote: String,
    /// Session start, seconds since the epoch.
    pub since: i64,
    /// sshd's privileged per-connection process (`sshd: USER [priv]`, or
    /// `sshd-session: USER [priv]` from OpenSSH 9.8 on).
    pub monitor_pid: i32,
    /// That process's start time (field 22 of /proc/PID/stat), so a reused
    /// pid is never mistaken for the session.
    pub monitor_start: u64,
    pub uid: u32,
    /// Where the session was placed, and so how it is ended.
    pub placement: Placement,
}

/// Where a session was put (by a backend in `session::backend`); its record
/// stores this, so the session is ended the way it was placed, by
/// whichever process reads the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum Placement {
    /// In the agent's own cgroup v2 group.
    Cgroup { group: PathBuf },
    /// Left in logind's scope for the session.
    Logind { session: String },
    /// Left where it is; its process tree is signalled.
    Signal,
}

impl Placement {
    pub fn name(&self) -> &'static str {
        match self {
            Placement::Cgroup { .. } => "cgroup",
            Placement::Logind { .. } => "logind",
            Placement::Signal => "signal",
        }
    }
}

/// A record as stored. Records written before placements had a name carry
/// `cgroup` / `logind_session` instead; they are read the same way.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    id: String,
    owner: String,
    guest: String,
    fingerprint: String,
    key_algorithm: String,
    key_blob: String,
    remote: String,
    since: i64,
    monitor_pid: i32,
    monitor_start: u64,
    uid: u32,
    #[serde(default)]
    placement: Option<Placement>,
    #[serde(default)]
    cgroup: Option<PathBuf>,
    #[serde(default)]
    logind_session: Option<String>,
}

impl From<StoredRecord> for SessionRecord {
    fn from(s: StoredRecord) -> Self {
        let placement = match (s.placement, s.cgroup, s.logind_session) {
            (Some(p), _, _) => p,
            (None, Some(group), _) => Placement::Cgroup { group },
            (None, None, Some(session)) => Placement::Logind { session },
            (None, None, None) => Placement::Signal,
        };
        SessionRecord {
            id: s.id,
            owner: s.owner,
            guest: s.guest,
            fingerprint: s.fingerprint,
            key_algorithm: s.key_algorithm,
            key_blob: s.key_blob,
            remote: s.remote,
            since: s.since,
            monitor_pid: s.monitor_pid,
            monitor_start: s.monitor_start,
            uid: s.uid,
            placement,
        }
    }
}

impl SessionRecord {
    pub fn file_name(id: &str) -> String {
        format!("{id}.json")
    }
}

/// Creates the records directory (root-only) if needed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records a new session. Never replaces a record: a connection is recorded
/// once, as the guest that opened it (`AlreadyExists` otherwise).
pub fn write(dir: &Path, record: &SessionRecord) -> io::Result<()> {
    ensure_dir(dir)?;
    let data = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    fsutil::atomic_create(
        &dir.join(SessionRecord::file_name(&record.id)),
        &data,
        0o600,
        None,
    )
}

pub fn remove(dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(SessionRecord::file_name(id))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn read(path: &Path) -> io::Result<SessionRecord> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(io::Error::other)
}

/// All records, oldest first. Unreadable records are returned as errors
/// beside the good ones, so callers can both act and report.
pub fn list(dir: &Path) -> (Vec<SessionRecord>, Vec<(PathBuf, io::Error)>) {
    // The cache is gone once listed: each record is this list's alone.
    let (records, bad) = Cache::default().list(dir);
    let records = records
        .into_iter()
        .map(|r| Arc::try_unwrap(r).unwrap_or_else(|shared| (*shared).clone()))
        .collect();
    (records, bad)
}

/// Records already read, by file name and inode. A record is written once,
/// by a create that never replaces, and never changed after (see `write`);
/// its name is the session id (the sshd monitor's pid and start time), not
/// reused while the run directory lives; a file under the same name with
/// another inode is another record. So the daemon reads each record once,
/// not once per pass: a pass that revokes one guest does not first read
/// every other session's record.
#[derive(Debug, Default)]
pub struct Cache {
    read: HashMap<OsString, (u64, Arc<SessionRecord>), foldhash::fast::RandomState>,
}

impl Cache {
    /// As [`list`], reading only the records not read before; forgets the
    /// ones that are gone. The records are shared with the cache, not
    /// copied.
    pub fn list(&mut self, dir: &Path) -> (Vec<Arc<SessionRecord>>, Vec<(PathBuf, io::Error)>) {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.read.clear();
                return (records, bad);
            }
            Err(e) => {
                bad.push((dir.to_path_buf(), e));
                return (records, bad);
            }
        };
        let mut seen = HashMap::with_capacity_and_hasher(self.read.len(), Default::default());
        for entry in entries.flatten() {
            let (name, inode) = (entry.file_name(), entry.ino());
            if Path::new(&name).extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let known = self
                .read
                .remove(&name)
                .filter(|(known_inode, _)| *known_inode == inode);
            let record = match known {
                Some((_, record)) => record,
                None => match read(&entry.path()) {
                    Ok(record) => Arc::new(record),
                    Err(e) => {
                        bad.push((entry.path(), e));
                        continue;
                    }
                },
            };
            records.push(Arc::clone(&record));
            seen.insert(name, (inode, record));
        }
        self.read = seen;
        records.sort_by(|a, b| (a.since, &a.id).cmp(&(b.since, &b.id)));
        (records, bad)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            owner: "alice".into(),
            guest: "bob".into(),
            fingerprint: "SHA256:x".into(),
            key_algorithm: "ssh-ed25519".into(),
            key_blob: "AAAA".into(),
            remote: "192.0.2.1".into(),
            since: 1,
            monitor_pid: 42,
            monitor_start: 7,
            uid: 1000,
            placement: Placement::Signal,
        }
    }

    #[test]
    fn records_round_trip_and_list() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sessions");
        write(&dir, &sample("b")).unwrap();
        write(&dir, &sample("a")).unwrap();
        let mut other = sample("a");
        other.guest = "carol".into();
        let e = write(&dir, &other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read(&dir.join("a.json")).unwrap().guest, "bob");
        fs::write(dir.join("junk.json"), "{").unwrap();
        let (records, bad) = list(&dir);
        assert_eq!(
            records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(bad.len(), 1);
        remove(&dir, "a").unwrap();
        remove(&dir, "a").unwrap();
        assert_eq!(list(&dir).0.len(), 1);
    }

    #[test]
    fn the_cache_reads_each_record_once_and_sees_every_change_of_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sessions");
        let mut cache = Cache::default();
        assert!(cache.list(&dir).0.is_empty(), "no directory yet");
        write(&dir, &sample("a")).unwrap();
        write(&dir, &sample("b")).unwrap();
        let ids = |cache: &mut Cache| {
            let (records, bad) = cache.list(&dir);
            assert!(bad.is_empty(), "{bad:?}");
            records
                .into_iter()
                .map(|r| format!("{}:{}", r.id, r.guest))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&mut cache), ["a:bob", "b:bob"]);
        // Gone, and another record under a name seen before (a new file,
        // so a new inode, kept alive so it cannot be reused).
        let keep = fs::File::open(dir.join("a.json")).unwrap();
        remove(&dir, "a").unwrap();
        remove(&dir, "b").unwrap();
        let mut other = sample("a");
        other.guest = "carol".into();
        write(&dir, &other).unwrap();
        assert_eq!(ids(&mut cache), ["a:carol"]);
        drop(keep);
        // A record that turns unreadable is reported, not served from
        // memory: it is a new file (again on a new inode: the one just
        // freed could otherwise be handed straight back by the file
        // system; session ids are never reused, see `write`).
        let keep = fs::File::open(dir.join("a.json")).unwrap();
        remove(&dir, "a").unwrap();
        fs::write(dir.join("a.json"), "{").unwrap();
        let (records, bad) = cache.list(&dir);
        assert!(records.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!(cache.read.len(), 0, "nothing kept of a removed record");
        drop(keep);
    }

    #[test]
    fn records_name_their_placement_and_old_records_still_read() {
        let mut record = sample("s1-2");
        record.placement = Placement::Cgroup {
            group: PathBuf::from("/cg/vmshare/s1-2"),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["placement"]["backend"], "cgroup");
        assert_eq!(json["placement"]["group"], "/cg/vmshare/s1-2");
        let back: SessionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);

        let mut old = serde_json::to_value(sample("s1-2")).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("placement");
        fields.insert("cgroup".into(), serde_json::Value::Null);
        fields.insert("logind_session".into(), "7".into());
        let read: SessionRecord = serde_json::from_value(old).unwrap();
        assert_eq!(
            read.placement,
            Placement::Logind {
                session: "7".into()
            }
        );
        let mut typo = serde_json::to_value(sample("s1-2")).unwrap();
        typo.as_object_mut()
            .unwrap()
            .insert("placment".into(), 1.into());
        assert!(serde_json::from_value::<SessionRecord>(typo).is_err());
    }
}
