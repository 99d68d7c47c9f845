//! Guest sessions: the PAM session hook's core, and the backends that place
//! a new session so that it can be ended as a whole, and end it.

pub mod admin;
pub mod backend;
pub mod hook;
pub mod membership;
pub mod owner_keys;
pub mod persistence;
pub mod provenance;
pub mod root_paths;
