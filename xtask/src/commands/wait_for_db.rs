//! `cargo xtask wait-for-db`: the wait of prestart, and nothing after it.

use crate::settings::context::DbArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    crate::connection::session::run(&loaded, crate::connection::session::Use::Wait, async |_| Ok(()))
}
