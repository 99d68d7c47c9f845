//! Logging for the small programs sshd runs (key lookup, PAM hook): one line
//! to the system log (journald or syslog listen on /dev/log) and to stderr.
//! Their stdout is a protocol, so nothing goes there.

use std::os::unix::net::UnixDatagram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// The authpriv facility: access decisions belong with sshd's own messages.
const FACILITY_AUTHPRIV: u8 = 10;

/// Sends `message` to the system log under `ident`, and to stderr.
pub fn log(ident: &str, level: Level, message: &str) {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let pri = (FACILITY_AUTHPRIV << 3) | level as u8;
    let datagram = format!("<{pri}>{ident}[{}]: {line}", std::process::id());
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(datagram.as_bytes(), "/dev/log");
    }
    eprintln!("{ident}: {line}");
}
