//! Downstream connection handling shared by all listeners: serving, timeouts, drain.

pub mod conn;
pub mod drain;
pub mod limits;
pub mod prefixed;
