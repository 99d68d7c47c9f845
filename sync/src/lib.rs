//! vmshare-sync: keeps one VM's grant file in step with its key in etcd.
//!
//! - [`config`] — `/etc/vmshare/sync.toml`.
//! - [`document`] — what the grant file says for what etcd holds (pure).
//! - [`grantfile`] — writing it, atomically and only when it changes.
//! - [`agent`] — the etcd session: get, watch, reconnect, staleness.
//! - [`history`] — whether etcd's answers still come from the history the
//!   grant file was read from (pure).
//! - [`status`] — what the agent reports to etcd and prints.
//! - [`cli`] — the program.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod document;
pub mod grantfile;
pub mod history;
pub mod status;
