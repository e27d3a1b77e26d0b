//! The control socket of `herald serve`: the server, where replies go, and a client. The
//! protocol it speaks lives in `crate::protocol`. See docs/PROTOCOL.md.

pub mod client;
pub mod replier;
pub mod server;
