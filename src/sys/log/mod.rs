//! Where the agent reports: syslog (authpriv), the audit trail (journald
//! fields or syslog key=value), and systemd's notify socket.

pub mod audit;
pub mod sdnotify;
pub mod syslog;
