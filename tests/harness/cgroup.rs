//! The hosts' cgroup v2 groups: finding the cgroup2 mount, killing and
//! removing a host's group tree, and sweeping up after test processes that
//! died without teardown.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Names of the hosts' groups start with this, then the owning test's pid.
pub(super) const CGROUP_PREFIX: &str = "vmshare-e2e-";
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub(super) fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("reading /proc/self/mountinfo: {e}"));
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount_point) = left.split(' ').nth(4) {
            return PathBuf::from(unescape_mountinfo(mount_point));
        }
    }
    panic!("no cgroup v2 file system is mounted (see /proc/self/mountinfo)");
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes hosts left behind by test processes that died without teardown
/// (SIGKILL, abort). Hosts of live processes are left alone.
pub(super) fn sweep_stale(cgroup2: &Path, base: &Path) {
    let owner_is_dead = |name: &str| match name.split('-').next().map(str::parse::<u32>) {
        Some(Ok(pid)) => !Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    };
    if let Ok(entries) = fs::read_dir(cgroup2) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(CGROUP_PREFIX) {
                if owner_is_dead(rest) {
                    let path = entry.path();
                    let result = kill_cgroup_tree(&path).and_then(|()| remove_cgroup_tree(&path));
                    if let Err(e) = result {
                        eprintln!("vmshare e2e: removing stale cgroup: {e}");
                    }
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(base) {
        for entry in entries.flatten() {
            if owner_is_dead(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Every cgroup directory at and below `root`, children before parents.
fn cgroup_dirs_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroup_dirs_bottom_up(&entry.path()));
            }
        }
    }
    if root.is_dir() {
        out.push(root.to_path_buf());
    }
    out
}

fn cgroup_pids(root: &Path) -> Vec<String> {
    cgroup_dirs_bottom_up(root)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().map(str::to_string).collect::<Vec<String>>())
        .collect()
}

/// Kills every process in the group and its subgroups and waits until they
/// are gone.
pub(super) fn kill_cgroup_tree(root: &Path) -> Result<(), String> {
    if !root.exists() {
        return Ok(());
    }
    let kill_file = root.join("cgroup.kill");
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        let pids = cgroup_pids(root);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes {pids:?} are still in {} after killing it",
                root.display()
            ));
        }
        // cgroup.kill (Linux 5.14+) kills the whole subtree without racing
        // forks; on older kernels kill what we see and look again.
        if fs::write(&kill_file, "1").is_err() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn remove_cgroup_tree(root: &Path) -> Result<(), String> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    for dir in cgroup_dirs_bottom_up(root) {
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // EBUSY while the last exits are still being accounted.
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("removing cgroup {}: {e}", dir.display()))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(())
}
