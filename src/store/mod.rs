//! State on disk: the agent config, the grant file read strictly with its
//! version, the compiled snapshot and the key lookup over it, edits of the
//! grant file, the session records, the key ledger, and what guests left
//! behind in owners' accounts (found, and reported).

pub mod config;
pub mod edit;
pub mod escapes;
pub mod lookup;
pub mod owner_keys;
pub mod records;
pub mod snapshot;
pub mod source;
pub mod watched;
