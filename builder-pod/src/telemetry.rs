//! Logging: `tracing` to stderr, filtered by RUST_LOG (default info, or debug with --debug).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub(crate) fn init(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
