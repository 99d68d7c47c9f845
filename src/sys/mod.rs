//! Thin wrappers over the system: strict file reads and atomic writes,
//! /proc, the account database, another process's stderr, and logging.

pub mod accounts;
pub mod as_user;
pub mod fsutil;
pub mod kill;
pub mod log;
pub mod owners_group;
pub mod procfs;
pub mod sockets;
pub mod stderr_of;
pub mod timezone;
pub mod tty;

/// How many threads this process may run at once, asked once: the answer
/// reads the cgroup's CPU quota from /proc and /sys each time (about half
/// a millisecond), and a compile asks more than once.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
