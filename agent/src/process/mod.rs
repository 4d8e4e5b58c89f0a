//! Child processes: spawning (pipes or a pty, always in their own process group), the session registry,
//! output pumps, exit reports, and PID 1 reaping. Exec and MCP sessions are built from these parts;
//! detached processes (`detached`) also keep their output in journals (`journal`).

pub mod cgroup;
pub mod detached;
pub mod exit;
pub mod journal;
pub mod launch;
pub mod pty;
pub mod pump;
pub mod reaper;
pub mod registry;
pub mod spawn;
