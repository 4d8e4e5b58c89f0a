//! The agent's parsers of input it cannot trust, with nothing else in them: [`path`] (a client's path,
//! normalised lexically below the root) and [`lines`] (an MCP server's stdout, split into messages).
//! The agent builds on them; the fuzzer links only them.

#![forbid(unsafe_code)]

pub mod lines;
pub mod path;
