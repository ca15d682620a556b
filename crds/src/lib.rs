//! Kiln's custom resources. Data and validation only: no I/O.
//!
//! Only the API coordinates exist so far; the `Builder` and `Build` types
//! arrive with the operator.

/// The API group of every Kiln resource.
pub const GROUP: &str = "kiln.dev";

/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
