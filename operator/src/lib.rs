//! The `kiln` command: Kiln's operator. `controller` reconciles Builders,
//! `crdgen` writes the CRDs; `gateway` and `up` arrive with their issue.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod controller;
pub mod crdgen;
pub mod metrics;

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
    /// Write the CustomResourceDefinitions of Builder and Build into the
    /// kiln-crds Helm chart, or check that the chart is current.
    Crdgen(crdgen::Args),
}

/// What made a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Crdgen(#[from] crdgen::Error),
    #[error(transparent)]
    Controller(#[from] controller::RunError),
}

/// Runs the parsed command; the exit code says whether it found what it
/// checks for (`crdgen --check` on a stale chart exits 1).
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Crdgen(args) => Ok(crdgen::run(&args)?),
        Command::Controller(args) => {
            controller::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
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
    fn crdgen_takes_check_and_a_chart_directory() {
        let cli = Cli::try_parse_from(["kiln", "crdgen", "--check", "--chart", "/tmp/chart"]).unwrap();
        let Command::Crdgen(args) = cli.command else { panic!("not crdgen") };
        assert!(args.check);
        assert_eq!(args.chart, std::path::Path::new("/tmp/chart"));

        let cli = Cli::try_parse_from(["kiln", "crdgen"]).unwrap();
        let Command::Crdgen(args) = cli.command else { panic!("not crdgen") };
        assert!(!args.check);
        assert_eq!(args.chart, std::path::Path::new("charts/kiln-crds"));
    }

    #[test]
    fn a_subcommand_is_required() {
        assert!(Cli::try_parse_from(["kiln"]).is_err());
    }
}
