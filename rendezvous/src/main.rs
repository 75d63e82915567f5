//! `rendezvous`: the server nodes bootstrap from, advertise to and punch holes through.

use clap::Parser;
use rendezvous::cli::Args;
use rendezvous::serve::Rendezvous;

fn main() -> anyhow::Result<()> {
    server_kit::init_logging();
    let args = Args::parse();
    let config = args.config()?;
    server_kit::run_with_metrics::<Rendezvous>(args.listen, config, args.metrics_listen)?;
    Ok(())
}
