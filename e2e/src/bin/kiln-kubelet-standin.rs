//! `kiln-kubelet-standin`: the kubelet stand-in of Kiln's cluster tests. See
//! `kiln_e2e::kubelet` for what it does and does not do.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_e2e::kubelet::{self, Backoff, Bind, Config, ImageMap, InitArgs};

#[derive(Debug, Parser)]
#[command(name = "kiln-kubelet-standin", version, args_conflicts_with_subcommands = true)]
#[command(about = "A kubelet stand-in for tests: runs the pods bound to its Node as local processes")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The cluster's kubeconfig (default: $KUBECONFIG).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The Node to register and run pods for.
    #[arg(long, default_value = kubelet::DEFAULT_NODE)]
    node: String,
    /// Where pod logs, per-pod directories and the ready marker go.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Where provisioned volumes go (default: <state>/volumes).
    #[arg(long, value_name = "DIR")]
    volumes: Option<PathBuf>,
    /// Runs PATH for images of repository NAME (tag ignored); NAME `*` for any other image.
    #[arg(long = "image", value_name = "NAME=PATH")]
    images: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: run inside a container's new mount namespace, bind the
    /// volumes, exec the program.
    #[command(hide = true)]
    ContainerInit {
        #[arg(long)]
        parent: u32,
        /// SOURCE TARGET rw|ro
        #[arg(long, num_args = 3, value_names = ["SOURCE", "TARGET", "MODE"])]
        bind: Vec<OsString>,
        #[arg(long)]
        workdir: PathBuf,
        #[arg(required = true, last = true)]
        program: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::ContainerInit { parent, bind, workdir, program }) = cli.command {
        let binds = bind
            .chunks(3)
            .map(|b| Bind {
                source: b[0].clone().into(),
                target: b[1].clone().into(),
                read_only: b[2] == "ro",
            })
            .collect();
        let mut program = program.into_iter();
        let args = InitArgs {
            parent,
            binds,
            workdir,
            program: program.next().map(PathBuf::from).unwrap_or_default(),
            args: program.collect(),
        };
        // Only returns on failure; the message lands in the pod's log.
        let error = kubelet::container_init(&args);
        eprintln!("kubelet stand-in: container init: {}", chain(&error));
        return ExitCode::from(127);
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(state) = cli.state else {
        eprintln!("kiln-kubelet-standin: --state DIR is required");
        return ExitCode::from(2);
    };
    let images = match ImageMap::parse(&cli.images) {
        Ok(images) => images,
        Err(e) => {
            eprintln!("kiln-kubelet-standin: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        kubeconfig: cli.kubeconfig,
        node: cli.node,
        state,
        volumes: cli.volumes,
        images,
        backoff: Backoff::default(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln-kubelet-standin: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubelet::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
