//! The `shoal` command: a thin CLI over the platform. `serve` and `demo` run it in this
//! process; the other subcommands talk to a running daemon's control API, finding its
//! address and admin token in the data directory. One file per subcommand.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod client;
mod commands;
mod zip;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Self-hosted serverless functions, many invocations per instance"
)]
struct Cli {
    /// The data directory (database, code, logs, admin token).
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", default_value = ".shoal")]
    data_dir: PathBuf,
    /// Control API address of a running daemon (default: read from the data directory).
    #[arg(long, global = true, env = "SHOAL_CONTROL")]
    control: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: public gateway plus control API.
    Serve(commands::serve::Args),
    /// Start a throwaway platform, deploy examples/hello, and replay the seed's burst
    /// with Shoal's packing and with Lambda's one-invocation-per-instance model.
    Demo(commands::demo::Args),
    /// Deploy a directory (shoal.toml or serverless.yml) or a Lambda .zip as new versions.
    Deploy(commands::deploy::Args),
    /// Call a function through the Lambda Invoke API and print the result.
    Invoke(commands::invoke::Args),
    /// List deployed functions.
    Ls,
    /// Show instances and queues of one function or all.
    Status(commands::status::Args),
    /// Print a function's logs.
    Logs(commands::logs::Args),
    /// Delete a function.
    Rm(commands::rm::Args),
    /// SQS-style queues: create, send, receive, purge, rm, ls.
    Queue(commands::queue::Args),
    /// What Lambda would bill for the calls of a window vs what Shoal used for them.
    Cost(commands::cost::Args),
    /// Print the live dashboard's URL and a one-time login link.
    Dashboard,
    /// Access keys for AWS SDKs and the AWS CLI (SigV4): create, ls, rm.
    Keys(commands::keys::Args),
    /// Lambda aliases, with weighted routing between two versions: set, ls, rm.
    Alias(commands::alias::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // RUST_LOG picks what is printed (e.g. `RUST_LOG=shoal_core=debug,info`). By default
    // the daemon says what it deploys, starts, stops and decides, and every error; the
    // demo and the client commands print only warnings, so their own output stays clean.
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file or a pipe gets plain text, and
    // the daemon does not spend time styling every field it formats.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let client = || client::Client::new(&cli.data_dir, cli.control.as_deref());
        match cli.command {
            Command::Serve(args) => commands::serve::run(&cli.data_dir, args).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Deploy(args) => commands::deploy::run(&client()?, args).await,
            Command::Invoke(args) => commands::invoke::run(&client()?, args).await,
            Command::Ls => commands::ls::run(&client()?).await,
            Command::Status(args) => commands::status::run(&client()?, args).await,
            Command::Logs(args) => commands::logs::run(&client()?, args).await,
            Command::Rm(args) => commands::rm::run(&client()?, args).await,
            Command::Queue(args) => commands::queue::run(&client()?, args).await,
            Command::Cost(args) => commands::cost::run(&client()?, args).await,
            Command::Dashboard => commands::dashboard::run(&client()?).await,
            Command::Keys(args) => commands::keys::run(&client()?, args).await,
            Command::Alias(args) => commands::alias::run(&client()?, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
