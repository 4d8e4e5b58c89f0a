//! Test support for the control plane: private containerd, PostgreSQL and berthd.

pub mod berthd;
pub mod containerd;
pub mod postgres;
pub mod registry;
