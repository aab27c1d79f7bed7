//! `lentera-loadgen`: see the crate docs (`src/lib.rs`) or run `lentera-loadgen --help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match lentera_loadgen::run(std::env::args().skip(1)).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lentera-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}
