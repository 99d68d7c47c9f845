//! The pure core: what the grant file says and who may log in with which
//! key. Plain functions over data: no file system, no clock, no processes.

pub mod civil;
pub mod diag;
pub mod key;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod owner_lines;
pub mod parse;
mod plain;
pub mod policy;
