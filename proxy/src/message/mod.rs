//! HTTP messages as both directions handle them: the body type, framing checks, header
//! hygiene, path normalisation, request targets, replayable and teed bodies, Envoy's
//! response flags, and the one mapping from failures to local replies. (Named apart from the
//! `http` crate, which the proxy uses everywhere.)

pub mod body;
pub mod errors;
pub mod framing;
pub mod grpc_frames;
pub mod headers;
pub mod path;
pub mod replay;
pub mod response_flags;
pub mod tee;
pub mod uri;
