//! Reads a file a user controls (an owner's `authorized_keys`) the way sshd
//! does: as that user, never as root. Whoever runs as the owner (a guest
//! too) can point the path anywhere: at a device root must not open
//! (`/dev/watchdog`), a FIFO, a FUSE mount that never answers. So a short-
//! lived helper, this same program run with the user's uid and gid, opens
//! and checks the file and hands its bytes over a pipe; the caller bounds
//! size and time and kills a helper that takes too long.
//!
//! The checks are sshd's StrictModes: a regular file, owned by the user or
//! root and not writable by group or others, in directories that are the
//! same up to the user's home (or `/`). A file sshd would refuse is refused.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The helper's argument: `PROGRAM --read-user-file PATH HOME LIMIT`.
pub const READ_FLAG: &str = "--read-user-file";

/// The helper's answer starts with one of these bytes.
const TEXT: u8 = b'T';
const MISSING: u8 = b'M';
const REFUSED: u8 = b'R';

/// What reading a user's file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFile {
    /// No such file (normal: `authorized_keys2` rarely exists).
    Missing,
    /// Its text (invalid UTF-8 replaced).
    Text(String),
    /// Unreadable, unsafe by sshd's rules, too large, or too slow.
    Refused(String),
}

/// Who reads, and within which bounds.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// This program, run as the helper.
    pub program: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a Path,
    /// Most bytes a file may have.
    pub limit: u64,
    /// Longest the helper may take.
    pub timeout: Duration,
}

impl Reader<'_> {
    /// Reads `path` as the user, through the helper.
    pub fn read(&self, path: &Path) -> UserFile {
        let child = Command::new(self.program)
            .arg(READ_FLAG)
            .arg(path)
            .arg(self.home)
            .arg(self.limit.to_string())
            .uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return UserFile::Refused(format!("cannot start the reader: {e}")),
        };
        let deadline = Instant::now() + self.timeout;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            // The answer can be larger than a pipe holds: read it while
            // the helper writes. One byte over the limit tells "too large".
            let most = self.limit + 1 + 1;
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let got = out.take(most).read_to_end(&mut bytes).map(|_| bytes);
                let _ = tx.send(got);
            });
        }
        let answer = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        // The helper has written all it will; it is exiting, or stuck.
        let exited = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break None,
            }
        };
        let Some(status) = exited else {
            // Not waited for: a helper stuck in the kernel must not hold
            // the login; it is reaped by init once we exit.
            let _ = child.kill();
            return UserFile::Refused(format!(
                "reading {} took longer than {:?}",
                path.display(),
                self.timeout
            ));
        };
        match answer {
            // Past the limit the helper may die of a closed pipe: too large.
            Ok(Ok(bytes)) if status.success() || bytes.len() as u64 > self.limit + 1 => {
                decode(path, &bytes, self.limit)
            }
            Ok(Ok(_)) => UserFile::Refused(format!("the reader of {} failed", path.display())),
            Ok(Err(e)) => UserFile::Refused(format!("reading {}: {e}", path.display())),
            Err(_) => UserFile::Refused(format!(
                "reading {} took longer than {:?}",
                path.display(),
                self.timeout
            )),
        }
    }
}

fn decode(path: &Path, bytes: &[u8], limit: u64) -> UserFile {
    match bytes.split_first() {
        Some((&TEXT, text)) if text.len() as u64 <= limit => {
            UserFile::Text(String::from_utf8_lossy(text).into_owned())
        }
        Some((&TEXT, _)) => {
            UserFile::Refused(format!("{} is larger than {limit} bytes", path.display()))
        }
        Some((&MISSING, _)) => UserFile::Missing,
        Some((&REFUSED, why)) => UserFile::Refused(String::from_utf8_lossy(why).into_owned()),
        _ => UserFile::Refused(format!("the reader of {} gave no answer", path.display())),
    }
}

/// The helper: `args` are the program's arguments (`PROGRAM --read-user-file
/// PATH HOME LIMIT`). Runs as the user; writes its answer to stdout.
pub fn serve(args: &[OsString]) -> ExitCode {
    let answer = match args {
        [_, flag, path, home, limit] if flag == READ_FLAG => {
            match limit.to_str().and_then(|l| l.parse::<u64>().ok()) {
                Some(limit) => {
                    let uid = nix::unistd::getuid().as_raw();
                    match read_checked(Path::new(path), Path::new(home), uid, limit) {
                        Ok(Some(bytes)) => [&[TEXT][..], &bytes].concat(),
                        Ok(None) => vec![MISSING],
                        Err(why) => [&[REFUSED][..], why.as_bytes()].concat(),
                    }
                }
                None => [&[REFUSED][..], b"bad limit"].concat(),
            }
        }
        _ => [&[REFUSED][..], b"bad arguments"].concat(),
    };
    let mut out = io::stdout().lock();
    match out.write_all(&answer).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Opens `path` like sshd (following links, then checking the file it
/// resolves to) and reads at most `limit` bytes plus one. `Ok(None)` if
/// it does not exist.
pub fn read_checked(
    path: &Path,
    home: &Path,
    uid: u32,
    limit: u64,
) -> Result<Option<Vec<u8>>, String> {
    let real = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // The resolved name is opened without following a link at its end,
    // so a link swapped in after the resolution is refused, and without
    // blocking (a FIFO); the type is checked before anything is read.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(
            (nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_NOCTTY)
                .bits(),
        )
        .open(&real)
        .map_err(|e| format!("cannot open {}: {e}", real.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", real.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    check_owner_mode(&real, "file", meta.uid(), meta.mode(), uid)?;
    check_dirs(&real, home, uid)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", real.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", real.display()));
    }
    Ok(Some(bytes))
}

/// sshd's rule for the file and each directory: owned by the user or
/// root, not writable by group or others.
fn check_owner_mode(
    path: &Path,
    what: &str,
    owner: u32,
    mode: u32,
    uid: u32,
) -> Result<(), String> {
    if (owner != 0 && owner != uid) || mode & 0o022 != 0 {
        return Err(format!(
            "bad ownership or modes for {what} {} (owner uid {owner}, mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Every directory above `real`, up to the home directory (included) or
/// `/`, as sshd's `safe_path` walks them.
fn check_dirs(real: &Path, home: &Path, uid: u32) -> Result<(), String> {
    let home: Option<PathBuf> = fs::canonicalize(home).ok();
    for dir in real.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        check_owner_mode(dir, "directory", meta.uid(), meta.mode(), uid)?;
        if home.as_deref() == Some(dir) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch home whose ancestors pass the checks for root.
    fn home() -> tempfile::TempDir {
        crate::sys::fsutil::tests::scratch()
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    /// Writes `dir/name` with `mode`.
    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_plain_file_is_read_and_a_missing_one_is_missing() {
        let h = home();
        let p = file(h.path(), "authorized_keys", "ssh-ed25519 AAAA me\n", 0o600);
        assert_eq!(
            read_checked(&p, h.path(), me(), 1 << 20).unwrap().unwrap(),
            b"ssh-ed25519 AAAA me\n"
        );
        assert!(read_checked(&p, h.path(), me(), 4)
            .unwrap_err()
            .contains("larger"));
        assert_eq!(
            read_checked(&h.path().join("nope"), h.path(), me(), 9).unwrap(),
            None
        );
    }

    #[test]
    fn a_link_to_a_safe_file_is_followed_like_sshd() {
        let h = home();
        let target = file(h.path(), "keys", "x", 0o644);
        let link = h.path().join("authorized_keys");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            read_checked(&link, h.path(), me(), 9).unwrap().unwrap(),
            b"x"
        );
    }

    #[test]
    fn devices_fifos_and_unsafe_modes_are_refused() {
        let h = home();
        let zero = h.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_checked(&zero, h.path(), me(), 9)
            .unwrap_err()
            .contains("not a regular file"));
        let fifo = h.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_checked(&fifo, h.path(), me(), 9)
            .unwrap_err()
            .contains("not a regular file"));
        let open = file(h.path(), "open", "x", 0o666);
        assert!(read_checked(&open, h.path(), me(), 9)
            .unwrap_err()
            .contains("bad ownership"));
        let dir = h.path().join("shared");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let inside = file(&dir, "authorized_keys", "x", 0o600);
        assert!(read_checked(&inside, h.path(), me(), 9)
            .unwrap_err()
            .contains("directory"));
    }

    #[test]
    fn someone_elses_file_is_refused() {
        let h = home();
        let p = file(h.path(), "k", "x", 0o644);
        if me() == 0 {
            std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
            assert!(read_checked(&p, h.path(), 0, 9)
                .unwrap_err()
                .contains("bad ownership"));
            assert!(read_checked(&p, h.path(), 4242, 9).is_ok());
        }
    }

    /// A stand-in helper program: a shell script.
    fn helper(dir: &Path, body: &str) -> PathBuf {
        file(dir, "helper", &format!("#!/bin/sh\n{body}\n"), 0o755)
    }

    fn reader<'a>(program: &'a Path, home: &'a Path, timeout: Duration) -> Reader<'a> {
        Reader {
            program,
            uid: me(),
            gid: nix::unistd::getgid().as_raw(),
            home,
            limit: 8,
            timeout,
        }
    }

    #[test]
    fn the_caller_bounds_the_helper_in_size_and_time() {
        let h = home();
        let p = h.path();
        let f = Path::new("f");
        let ok = helper(p, "printf 'Tkeys'");
        assert_eq!(
            reader(&ok, p, Duration::from_secs(5)).read(f),
            UserFile::Text("keys".into())
        );
        let missing = helper(p, "printf M");
        assert_eq!(
            reader(&missing, p, Duration::from_secs(5)).read(f),
            UserFile::Missing
        );
        let big = helper(p, "printf T; head -c 100000 /dev/zero");
        assert!(
            matches!(reader(&big, p, Duration::from_secs(5)).read(f), UserFile::Refused(w) if w.contains("larger"))
        );
        let slow = helper(p, "exec sleep 30");
        let started = Instant::now();
        assert!(
            matches!(reader(&slow, p, Duration::from_millis(300)).read(f), UserFile::Refused(w) if w.contains("longer"))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let failed = helper(p, "printf Tkeys; exit 1");
        assert!(matches!(
            reader(&failed, p, Duration::from_secs(5)).read(f),
            UserFile::Refused(_)
        ));
    }
}
