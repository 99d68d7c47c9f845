//! vmshare: share a Linux VM's account with guests over SSH, and end their
//! access — new logins and live sessions — the moment it is revoked.
//!
//! The tree is the map (see the README's "Where to change what"):
//! - [`grant`]: the pure core — the grant file's model, parser, key checks,
//!   policy and the "Share VM" lifecycle. No file system, no clock.
//! - [`store`]: state on disk — agent config, the grant file as a source,
//!   the compiled snapshot, the key lookup, edits, session records.
//! - [`session`]: the PAM session hook and the enforcement backends that
//!   place a session so it can be ended, and end it.
//! - [`sys`]: thin wrappers over the system — files, /proc, accounts, logs.
//! - [`daemon`], [`cli`], [`control`], [`keys_command`], [`portal`]: the
//!   programs.
#![forbid(unsafe_code)]

pub mod cli;
pub mod control;
pub mod daemon;
pub mod grant;
pub mod keys_command;
pub mod portal;
pub mod session;
pub mod store;
pub mod sys;
