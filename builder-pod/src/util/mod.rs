//! Go standard library behaviour that kilnd must reproduce exactly: BuildKit
//! cleans paths, parses numbers and durations and quotes values into its
//! messages with Go's `path`, `strconv` and `time`, and users, cache keys and
//! the corpus compare kilnd's results with buildkitd's. Each helper exists
//! once here and is tested against the Go documentation of the function it
//! mirrors.

pub(crate) mod gopath;
pub(crate) mod gotime;
pub(crate) mod strconv;
