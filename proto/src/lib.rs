//! Wire types shared by Kiln's crates.
//!
//! BuildKit's own protocol (Control, LLBBridge, the session services and LLB
//! itself) comes from `bollard-buildkit-proto`, re-exported here as
//! [`buildkit`] so every crate takes those types from one place and one
//! version. Kiln's own API between gateway, operator and builders is added
//! here when the gateway needs it.

pub use bollard_buildkit_proto as buildkit;
