//! `lentera`: the operator's command line — migrations, device provisioning, operator
//! accounts and API tokens. Run `lentera --help`.
//!
//! Secrets (device tokens, generated passwords, API tokens) are printed once, as the last
//! word of the last line, so a script can take them with `| tail -n1 | awk '{print $NF}'`;
//! only their hashes are stored.

mod args;
mod commands;
mod csv;

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match commands::run(std::env::args().skip(1)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lentera: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
