//! Pseudo-terminals seen from /proc: the pty a process has as its
//! controlling terminal, the ptys sshd allocated for a connection, and
//! writing to a pty's slave side, which shows text on that terminal.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// The device major of every pty slave (`/dev/pts/N` is 136:N).
const PTS_MAJOR: u64 = 136;

/// The pty index of a `tty_nr` from /proc/PID/stat (the kernel's encoding
/// of a device number), if it names a pty slave.
pub fn pts_index(tty_nr: u64) -> Option<u32> {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    (major == PTS_MAJOR).then_some(minor as u32)
}

/// Field 7 (`tty_nr`) of /proc/PID/stat text, counted from the last `)`
/// (the command name may hold spaces and parentheses).
pub fn parse_tty_nr(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); tty_nr is field 7.
    rest.split_ascii_whitespace().nth(4)?.parse().ok()
}

/// The ptys named in the title of sshd's per-connection process
/// (`sshd: alice@pts/3,pts/5`, or `sshd-session: …` from OpenSSH 9.8 on,
/// padded with spaces), from its /proc/PID/cmdline.
pub fn parse_title_ptys(cmdline: &[u8]) -> Vec<u32> {
    let title = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let title = String::from_utf8_lossy(title);
    let Some((_, ttys)) = title.rsplit_once('@') else {
        return Vec::new();
    };
    ttys.trim()
        .split(',')
        .filter_map(|t| t.strip_prefix("pts/")?.parse().ok())
        .collect()
}

/// The pty that `pid` has as its controlling terminal, if any.
pub fn controlling_pty(pid: i32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    pts_index(parse_tty_nr(&stat)?)
}

/// The ptys sshd allocated for the connection whose privileged monitor is
/// `monitor`, as the monitor's children (sshd's unprivileged process for
/// that connection) name them in their titles. Those processes run sshd's
/// own code and cannot be traced or rewritten by the account's other
/// processes, and none of those can become a child of the root monitor.
pub fn sshd_ptys(monitor: i32) -> Vec<u32> {
    crate::sys::procfs::all()
        .iter()
        .filter(|p| p.ppid == monitor)
        .filter_map(|p| fs::read(format!("/proc/{}/cmdline", p.pid)).ok())
        .flat_map(|cmdline| parse_title_ptys(&cmdline))
        .collect()
}

/// Opens pty `index`'s slave side for writing: never as the caller's
/// controlling terminal, never blocking, and only if `/dev/pts/INDEX` is
/// that pty's device.
pub fn open_slave(index: u32) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(format!("/dev/pts/{index}"))?;
    let meta = file.metadata()?;
    let rdev = meta.rdev();
    let is_pty = meta.file_type().is_char_device()
        && nix::sys::stat::major(rdev) == PTS_MAJOR
        && nix::sys::stat::minor(rdev) == u64::from(index);
    if !is_pty {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/dev/pts/{index} is not that pty"),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_nr_names_pty_slaves_only() {
        // pts/3 is 136:3; pts/300 has its minor's high bits above bit 20.
        assert_eq!(pts_index(136 << 8 | 3), Some(3));
        assert_eq!(
            pts_index((136 << 8) | (300 & 0xff) | ((300 & !0xff) << 12)),
            Some(300)
        );
        assert_eq!(pts_index(0), None);
        // tty1 (4:1) and the serial console (4:64) are no ptys.
        assert_eq!(pts_index(4 << 8 | 1), None);
        assert_eq!(pts_index(4 << 8 | 64), None);
    }

    #[test]
    fn stat_fields_and_sshd_titles_are_read_where_they_are() {
        let stat = "4242 (a (b) c) S 1 4242 4242 34819 4242 4194560 0 0";
        assert_eq!(parse_tty_nr(stat), Some(34819));
        assert_eq!(pts_index(34819), Some(3));
        assert_eq!(parse_tty_nr("1 (init) S 0 1 1 0 -1"), Some(0));
        assert_eq!(parse_tty_nr("garbage"), None);

        assert_eq!(parse_title_ptys(b"sshd: alice@pts/7\0\0\0"), [7]);
        assert_eq!(
            parse_title_ptys(b"sshd-session: alice@pts/3,pts/12"),
            [3, 12]
        );
        // OpenSSH 10 pads the title with spaces to the original length.
        assert_eq!(
            parse_title_ptys(b"sshd-session: alice@pts/4           \0"),
            [4]
        );
        assert_eq!(parse_title_ptys(b"sshd: alice@notty"), Vec::<u32>::new());
        assert_eq!(parse_title_ptys(b"sshd: alice [priv]"), Vec::<u32>::new());
        assert_eq!(parse_title_ptys(b""), Vec::<u32>::new());
    }
}
