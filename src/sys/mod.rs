//! Thin wrappers over the system: strict file reads and atomic writes,
//! /proc, the account database, another process's stderr, and logging.

pub mod accounts;
pub mod as_user;
pub mod fsutil;
pub mod kill;
pub mod log;
pub mod procfs;
pub mod sockets;
pub mod stderr_of;
pub mod timezone;
pub mod tty;
