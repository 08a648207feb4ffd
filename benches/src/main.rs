//! `meshlite-bench`: the benchmark binary (see `meshlite-bench --help`).
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser as _;
use meshlite_bench::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::App(args)) => {
            meshlite_bench::app::run(&args).context("meshlite-bench app")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Pause) => {
            meshlite_bench::app::pause().context("meshlite-bench pause")?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let all_ran = meshlite_bench::scenario::run(&cli.bench)
                .with_context(|| format!("scenario {:?}", cli.bench.scenario))?;
            Ok(if all_ran {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
