//! The subcommands of the `inferd` binary beyond `serve`: one module each.

pub mod advise;
pub mod bench;
