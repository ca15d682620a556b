//! Sources of build inputs, one child per LLB source kind (BuildKit's
//! `source/`): container images, the client's local directories, HTTP(S)
//! downloads and git repositories.

pub mod git;
pub mod http;
pub mod image;
pub mod local;
