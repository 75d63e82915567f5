//! `forwarding-check`: tells callers their WAN IP and whether a TCP port on it is reachable.

use clap::Parser;
use forwarding_check::cli::Args;
use forwarding_check::core::Core;

fn main() -> anyhow::Result<()> {
    server_kit::init_logging();
    let args = Args::parse();
    server_kit::run_with_metrics::<Core>(args.listen, args.config(), args.metrics_listen)?;
    Ok(())
}
