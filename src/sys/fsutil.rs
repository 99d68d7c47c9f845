//! File system edges: strict opens (like sshd's StrictModes) and atomic
//! writes.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Checks that `path`'s file is safe to trust: a regular file owned by root,
/// not writable by group or others.
pub fn check_trusted_file(path: &Path, meta: &Metadata) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} has mode {:o}; it must not be writable by group or others",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks every directory above `path` (as given and as resolved): owned by
/// root and not writable by group or others, as sshd does for
/// AuthorizedKeysCommand.
pub fn check_trusted_dirs(path: &Path) -> Result<(), String> {
    let mut paths = vec![path.to_path_buf()];
    if let Ok(real) = fs::canonicalize(path) {
        if real != path {
            paths.push(real);
        }
    }
    for p in paths {
        for dir in p.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "directory {} (owner uid {}, mode {:o}) must be owned by root and not writable by group or others",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ));
            }
        }
    }
    Ok(())
}

/// Reads a file we must trust. `Ok(None)` when it does not exist. Errors are
/// one line, naming the file.
pub fn read_strict(path: &Path, limit: u64) -> Result<Option<(String, Metadata)>, String> {
    // Non-blocking, so that a FIFO put in the file's place cannot hang us
    // before the checks below refuse it; reads of a regular file ignore it.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    check_trusted_file(path, &meta)?;
    check_trusted_dirs(path)?;
    if meta.len() > limit {
        return Err(format!(
            "{} is {} bytes; the limit is {limit}",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} grew past {limit} bytes", path.display()));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(Some((text, meta)))
}

/// Why [`lock_exclusive`] did not get its lock.
#[derive(Debug)]
pub enum LockError {
    /// Another holder kept it for the whole wait.
    Busy,
    /// The lock file could not be opened or locked; the message names it.
    Failed(String),
}

/// Takes an exclusive `flock` on `path` (created root-only if missing,
/// never through a symlink), waiting up to `wait` for another holder.
pub fn lock_exclusive(
    path: &Path,
    wait: std::time::Duration,
) -> Result<nix::fcntl::Flock<File>, LockError> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + wait;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| LockError::Failed(format!("cannot open {}: {e}", path.display())))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(LockError::Busy),
            Err((_, e)) => {
                return Err(LockError::Failed(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Writes `data` to `path` atomically: a temp file in the same directory,
/// fsync, rename over, fsync of the directory. The new file gets `mode` and,
/// when given, the owner `(uid, gid)`.
pub fn atomic_write(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    write_then_place(path, data, mode, owner, Durable::Yes, |tmp| {
        fs::rename(tmp, path)
    })
}

/// Like [`atomic_write`] (readers see the old file or the new one, never
/// a part), without the fsyncs: for files under a run dir (a tmpfs that a
/// reboot empties anyway), where durability buys nothing and two fsyncs
/// per write cost a busy host's disk.
pub fn atomic_replace_volatile(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_then_place(path, data, mode, None, Durable::No, |tmp| {
        fs::rename(tmp, path)
    })
}

/// Whether a write reaches the disk before it is placed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durable {
    Yes,
    No,
}

/// Like [`atomic_write`], but never replaces: fails with `AlreadyExists`
/// when `path` exists (the complete file appears under its name, or
/// nothing does).
pub fn atomic_create(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    write_then_place(path, data, mode, owner, Durable::Yes, |tmp| {
        fs::hard_link(tmp, path)?;
        fs::remove_file(tmp)
    })
}

/// Writes a complete temp file beside `path`, then `place`s it.
fn write_then_place(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    durable: Durable,
    place: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = temp_name(dir, &name.to_string_lossy());
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(data)?;
        if durable == Durable::No {
            return place(&tmp);
        }
        // The data is on disk before the name points at it (a crash leaves
        // the old file or the complete new one), and the rename is on disk
        // before the caller goes on (a revoke survives a power cut).
        f.sync_all()?;
        place(&tmp)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_name(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(".{name}.{}.{n}.{nanos}.tmp", std::process::id()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch directory whose ancestors pass the strict checks (unlike
    /// anything under /tmp): the build tree if it qualifies, else /run.
    pub fn scratch() -> tempfile::TempDir {
        let build = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let base = if check_trusted_dirs(&build.join("x")).is_ok() {
            build
        } else {
            PathBuf::from("/run")
        };
        tempfile::Builder::new()
            .prefix("vmshare-test")
            .tempdir_in(base)
            .unwrap()
    }

    #[test]
    fn atomic_create_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("r.json");
        atomic_create(&path, b"first", 0o600, None).unwrap();
        let e = atomic_create(&path, b"second", 0o600, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "temp file left");
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = scratch();
        let p = d.path().join("f");
        fs::write(&p, "old").unwrap();
        atomic_write(&p, b"new", 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn strict_read_refuses_writable_files() {
        let d = scratch();
        let p = d.path().join("g");
        fs::write(&p, "x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_strict(&p, 100).unwrap_err();
        assert!(e.contains("must not be writable"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(read_strict(&p, 100).unwrap().unwrap().0, "x");
            assert!(read_strict(&p, 0).unwrap_err().contains("limit"));
        }
        assert!(read_strict(&d.path().join("missing"), 100)
            .unwrap()
            .is_none());
    }

    #[test]
    fn strict_read_refuses_writable_directories() {
        let d = scratch();
        let sub = d.path().join("open");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
        let p = sub.join("g");
        fs::write(&p, "x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_strict(&p, 100).unwrap_err();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn strict_read_checks_the_target_of_a_symlink() {
        let d = scratch();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let target = open.join("g");
        fs::write(&target, "x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_strict(&link, 100).is_err());
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_strict(&link, 100).unwrap_err();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn strict_read_refuses_a_fifo_without_blocking() {
        let d = scratch();
        let p = d.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_strict(&p, 100).map(|_| ())));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("read_strict blocked on a FIFO");
        assert!(got.unwrap_err().contains("not a regular file"));
    }
}
