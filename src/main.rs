//! The `stackdns` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::Parser;
use stackdns::cli::Request;
use stackdns::config::{Cli, Command, LogFormat, StoreCommand, StoreLocation};
use stackdns::store::etcd::EtcdStore;
use stackdns::store::{RedbStore, Store};

/// With `--features dhat-heap` (bench/README.md), every allocation is tracked and a heap
/// profile is written to `dhat-heap.json` when the process exits.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    // `serve --config FILE`: the file's settings become flags before the command line's.
    let args = match stackdns::config::expand(std::env::args_os().collect(), |name| std::env::var_os(name)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("stackdns: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_env("STACKDNS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tower_http=warn,hickory_server=error,rustls=error")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.command.log_format() {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Every error message already names its cause.
            eprintln!("stackdns: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `stackdns store …`: runs without a server (the stores must not be in use).
fn store_command(command: StoreCommand) -> anyhow::Result<std::process::ExitCode> {
    let StoreCommand::Copy { from, to, etcd } = command;
    let open = |location: &StoreLocation| -> anyhow::Result<Box<dyn Store>> {
        Ok(match location {
            StoreLocation::Redb(dir) => {
                let dir = dir
                    .clone()
                    .unwrap_or_else(|| std::path::PathBuf::from("stackdns-data"));
                std::fs::create_dir_all(&dir)?;
                Box::new(RedbStore::open(&dir.join("stackdns.redb"), 64 << 20)?)
            }
            StoreLocation::Etcd(members) => {
                Box::new(EtcdStore::connect(etcd.config(members, String::new()))?)
            }
        })
    };
    let source = open(&from)?;
    let destination = open(&to)?;
    let copied = stackdns::store::copy::copy(source.as_ref(), destination.as_ref())?;
    println!(
        "copied {from} -> {to}: serial {}, {} nodes, {} containers, {} stacks, {} journal differences",
        copied.serial, copied.nodes, copied.containers, copied.stacks, copied.journal
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (connection, request) = match cli.command {
        Command::Serve(args) => {
            runtime.block_on(stackdns::server::run(*args))?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::Agent(args) => {
            runtime.block_on(stackdns::agent::run(args))?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::Node { command, connection } => (connection, Request::Node(command)),
        Command::Stack { command, connection } => (connection, Request::Stack(command)),
        Command::Service { command, connection } => (connection, Request::Service(command)),
        Command::User { command, connection } => (connection, Request::User(command)),
        Command::Lookup { args, connection } => (connection, Request::Lookup(args)),
        Command::Store { command } => return store_command(command),
    };
    match runtime.block_on(stackdns::cli::run(connection, request)) {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("stackdns: {e}");
            Ok(e.exit_code())
        }
    }
}
