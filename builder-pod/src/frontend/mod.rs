//! Frontends: what turns a build request into LLB. `dockerfile` is the
//! built-in Dockerfile frontend; `gateway` is the LLBBridge API that
//! client-side frontends (buildx) drive.

pub(crate) mod dockerfile;
pub(crate) mod gateway;
pub(crate) mod llb;
