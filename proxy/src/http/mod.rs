//! HTTP plumbing shared by the inbound and outbound paths: the body type, header hygiene,
//! request targets and the mapping from failures to responses.

pub mod body;
pub mod errors;
pub mod framing;
pub mod headers;
pub mod path;
pub mod replay;
pub mod response_flags;
pub mod tee;
pub mod uri;
