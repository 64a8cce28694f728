#[tokio::main]
async fn main() -> std::process::ExitCode {
    nodepool_cli::main().await
}
