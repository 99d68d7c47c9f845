//! vmshare: share a Linux VM's account with guests over SSH, and end their
//! access — new logins and live sessions — the moment it is revoked.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod diag;
pub mod edit;
pub mod enforce;
pub mod fsutil;
pub mod grants;
pub mod keys_command;
pub mod logind;
pub mod lookup;
pub mod pam_hook;
pub mod policy;
pub mod procfs;
pub mod sdnotify;
pub mod sessions;
pub mod snapshot;
pub mod source;
pub mod syslog;
