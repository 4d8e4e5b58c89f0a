//! The agent's parsers of input it cannot trust, with nothing else in them: [`path`] (a client's path,
//! normalised lexically below the root), [`lines`] (an MCP server's stdout, split into messages) and
//! [`env`] (the rule for environment variables, which berthd shares).
//! The agent builds on them; the fuzzer links only them.

#![forbid(unsafe_code)]

pub mod env;
pub mod lines;
pub mod path;
