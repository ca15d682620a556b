//! Build frontends: turn a user's build description into something the
//! solver can run. Only the Dockerfile frontend exists so far.

pub mod dockerfile;
