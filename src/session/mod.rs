//! Guest sessions: the PAM session hook's core, and the backends that place
//! a new session so that it can be ended as a whole, and end it.

pub mod admin;
pub mod backend;
pub mod classify;
pub mod hook;
pub mod membership;
pub mod persistence;
pub mod root_paths;
