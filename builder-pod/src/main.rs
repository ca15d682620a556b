use clap::Parser;
use kiln_builder::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Args::parse())?;
    kiln_builder::telemetry::init(config.debug);
    kiln_builder::run(config).await
}
