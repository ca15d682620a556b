//! Frontends: what turns a build request into LLB. `gateway` is the
//! LLBBridge API that client-side frontends (buildx) drive.

pub mod gateway;
