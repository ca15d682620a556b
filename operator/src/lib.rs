//! The `kiln` command: Kiln's operator. `controller` reconciles Builders,
//! `gateway` routes buildx to builders, `up` runs a local pool, `crdgen`
//! writes the CRDs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod controller;
mod crdgen;
mod gateway;
mod metrics;
mod shutdown;
mod up;

/// Kiln runs pools of BuildKit-compatible builders on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile Builders into pools of kilnd pods (leader-elected).
    Controller(controller::Args),
    /// One BuildKit endpoint in front of several kilnd builders.
    Gateway(gateway::Args),
    /// Start local kilnd builders and a gateway in front of them: a pool on
    /// this machine that buildx builds against, no cluster needed.
    Up(up::Args),
    /// Write the CustomResourceDefinitions of Builder and Build into the
    /// Helm charts (kiln's crds/ and the kiln-crds chart), or check that
    /// they are current.
    Crdgen(crdgen::Args),
}

/// What made a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Crdgen(#[from] crdgen::Error),
    #[error(transparent)]
    Controller(#[from] controller::RunError),
    #[error(transparent)]
    Gateway(#[from] gateway::Error),
    #[error(transparent)]
    Up(#[from] up::Error),
    #[error("a second signal: stopped without finishing the drain")]
    Aborted,
}

/// Runs the parsed command; the exit code says whether it found what it
/// checks for (`crdgen --check` on a stale chart exits 1).
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Crdgen(args) => Ok(crdgen::run(&args)?),
        Command::Controller(args) => {
            until_signalled(async move |stop| Ok(controller::run(args, stop).await?)).await
        }
        Command::Gateway(args) => {
            until_signalled(async move |stop| Ok(gateway::run(args, stop).await?)).await
        }
        Command::Up(args) => until_signalled(async move |stop| Ok(up::run(args, stop).await?)).await,
    }
}

/// Runs a command that serves until the first signal cancels the token it
/// is given, then drains; a second signal drops it where it is.
async fn until_signalled(
    command: impl AsyncFnOnce(CancellationToken) -> Result<(), Error>,
) -> Result<ExitCode, Error> {
    let signals = shutdown::Signals::watch();
    tokio::select! {
        result = command(signals.stop.clone()) => result.map(|()| ExitCode::SUCCESS),
        () = signals.abort.cancelled() => Err(Error::Aborted),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn crdgen_takes_check_and_a_charts_directory() {
        let cli = Cli::try_parse_from(["kiln", "crdgen", "--check", "--charts", "/tmp/charts"]).unwrap();
        let Command::Crdgen(args) = cli.command else { panic!("not crdgen") };
        assert!(args.check);
        assert_eq!(args.charts, std::path::Path::new("/tmp/charts"));

        let cli = Cli::try_parse_from(["kiln", "crdgen"]).unwrap();
        let Command::Crdgen(args) = cli.command else { panic!("not crdgen") };
        assert!(!args.check);
        assert_eq!(args.charts, std::path::Path::new("charts"));
    }

    #[test]
    fn a_subcommand_is_required() {
        assert!(Cli::try_parse_from(["kiln"]).is_err());
    }
}
