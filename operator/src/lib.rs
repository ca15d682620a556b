//! The `kiln` command: Kiln's operator. `controller` reconciles Builders,
//! `gateway` routes buildx to builders, `up` runs a local pool, `crdgen`
//! writes the CRDs, `client-cert` issues a client certificate for the gateway,
//! `delete-pools` deletes pools while the controller drains them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod certs;
mod controller;
mod crdgen;
mod delete_pools;
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
    /// Issue a client certificate for the gateway from the chart's client CA
    /// and print the `docker buildx create` line that uses it.
    ClientCert(certs::Args),
    /// Delete the Builders a label selector names and wait while the
    /// controller drains them (the chart's pre-delete hook).
    DeletePools(delete_pools::Args),
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
    #[error(transparent)]
    ClientCert(#[from] certs::Error),
    #[error(transparent)]
    DeletePools(#[from] delete_pools::Error),
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
        Command::ClientCert(args) => certs::run(args).await.map(|()| ExitCode::SUCCESS).map_err(Error::from),
        Command::DeletePools(args) => {
            delete_pools::run(args).await.map(|()| ExitCode::SUCCESS).map_err(Error::from)
        }
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
    fn client_cert_needs_a_name_and_defaults_to_the_charts_objects() {
        let cli = Cli::try_parse_from(["kiln", "client-cert", "--name", "ci"]).unwrap();
        let Command::ClientCert(args) = cli.command else { panic!("not client-cert") };
        assert_eq!(args.name, "ci");
        assert_eq!(args.namespace, "kiln");
        assert_eq!((args.ca_secret.as_str(), args.server_secret.as_str()), ("kiln-ca", "kiln-gateway-tls"));
        assert_eq!(args.service, "kiln-gateway");
        assert_eq!((args.days, args.pool, args.out, args.gateway), (365, None, None, None));

        assert!(Cli::try_parse_from(["kiln", "client-cert"]).is_err(), "--name is required");
        assert!(Cli::try_parse_from(["kiln", "client-cert", "--name", "ci", "--days", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "kiln",
            "client-cert",
            "--name",
            "ci",
            "-n",
            "builds",
            "--pool",
            "big.builds",
            "--out",
            "/tmp/c",
            "--gateway",
            "tcp://gw:443",
            "--days",
            "30",
        ])
        .unwrap();
        let Command::ClientCert(args) = cli.command else { panic!("not client-cert") };
        assert_eq!(args.namespace, "builds");
        assert_eq!(args.pool.as_deref(), Some("big.builds"));
        assert_eq!(args.gateway.as_deref(), Some("tcp://gw:443"));
        assert_eq!(args.days, 30);
    }

    #[test]
    fn delete_pools_needs_a_selector_and_takes_namespaces() {
        let cli = Cli::try_parse_from([
            "kiln",
            "delete-pools",
            "--selector",
            "app.kubernetes.io/instance=kiln",
            "-n",
            "kiln",
            "-n",
            "team-a",
        ])
        .unwrap();
        let Command::DeletePools(args) = cli.command else { panic!("not delete-pools") };
        assert_eq!(args.selector, "app.kubernetes.io/instance=kiln");
        assert_eq!(args.namespace, ["kiln", "team-a"]);
        assert_eq!(args.timeout, 600);
        assert!(Cli::try_parse_from(["kiln", "delete-pools"]).is_err(), "--selector is required");
        assert!(
            Cli::try_parse_from(["kiln", "delete-pools", "--selector", " "]).is_err(),
            "an empty selector would name every Builder"
        );
    }

    #[test]
    fn a_subcommand_is_required() {
        assert!(Cli::try_parse_from(["kiln"]).is_err());
    }
}
