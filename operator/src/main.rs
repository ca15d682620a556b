//! `kiln`: the operator's command line. Parsing and the exit code live here;
//! everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kiln_operator::Cli::parse();
    match kiln_operator::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}
