//! The control socket of `herald serve`: the line protocol, the server, a client, and the
//! daemon wiring (`serve`, `check`). See docs/PROTOCOL.md.

pub mod client;
pub mod daemon;
pub mod protocol;
pub mod server;
