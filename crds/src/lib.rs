//! Kiln's custom resources: `Builder` (a pool of kilnd pods) and `Build` (one
//! image build), their condition types and reasons, and the pure checks the
//! controller runs on them. Data and validation only: no I/O.
//!
//! The CRD YAML in `charts/kiln-crds/` is generated from these types by
//! `kiln crdgen`; the API server enforces the schema and its CEL rules, and
//! [`BuilderSpec::validate`] / [`BuildSpec::validate`] check the same things
//! (and a few the API server cannot) for specs that got past it.

pub mod build;
pub mod builder;
pub mod condition;
pub mod validation;

pub use build::{Build, BuildPhase, BuildSpec, BuildStatus};
pub use builder::{Builder, BuilderPhase, BuilderSpec, BuilderStatus};
pub use validation::{FieldError, FieldErrors};

/// The API group of every Kiln resource.
pub const GROUP: &str = "kiln.dev";

/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
