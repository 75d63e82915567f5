//! `dht-msg`: the signalling mailbox server.

use clap::Parser;
use dht_msg::cli::Args;
use dht_msg::serve::Mailboxes;

fn main() -> anyhow::Result<()> {
    server_kit::init_logging();
    let args = Args::parse();
    let config = args.config()?;
    server_kit::run_with_metrics::<Mailboxes>(args.listen, config, args.metrics_listen)?;
    Ok(())
}
