//! Sources of build inputs, one child per LLB source kind (BuildKit's
//! `source/`): so far container images.

pub mod image;
