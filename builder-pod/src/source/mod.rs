//! Sources of build inputs, one child per LLB source kind (BuildKit's
//! `source/`): container images and the client's local directories.

pub mod image;
pub mod local;
