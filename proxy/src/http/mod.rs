//! HTTP plumbing shared by the inbound and outbound paths: the body type, header hygiene and
//! the mapping from failures to responses.

pub mod body;
pub mod errors;
pub mod headers;
