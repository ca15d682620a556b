#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln_builder::main().await
}
