//! `kiln`: the operator's command line. Its subcommands (`controller`,
//! `gateway`, `crdgen`, `up`) arrive with the operator and gateway issues;
//! until then it only reports its version and the API it will serve.

use clap::Parser;

/// Kiln runs pools of BuildKit-compatible builders on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "kiln {}: no subcommands are built yet; the API group will be {}/{}",
        env!("CARGO_PKG_VERSION"),
        kiln_crds::GROUP,
        kiln_crds::VERSION
    );
}
