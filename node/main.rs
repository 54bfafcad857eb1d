//! The `murmur` binary: command-line dispatch only. Exit status (see `--help`): 0 done,
//! 1 unreachable or failed, 2 bad usage or config, 3 nothing found.

use std::process::ExitCode;

use clap::Parser;
use murmur::cli::{self, Cli, Command};
use murmur::config::ProcessEnv;
use murmur::gossip::Keyring;
use murmur::Agent;
use murmur::Config;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: it hands freed pages back to the kernel (a
/// background thread purges what stayed unused for 10 s), where glibc kept a sidecar at
/// 9× its idle RSS a minute after 10,000 connections had closed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logs(json: bool, default_filter: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => {
            let config = match Config::load(&args, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("murmur: config error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(config.log.json, &config.log.filter);
            match murmur::rlimit::raise_open_files() {
                (limit, None) => tracing::debug!(soft = ?limit.soft, hard = ?limit.hard, "open files limit"),
                (limit, Some(e)) => tracing::warn!(
                    soft = ?limit.soft,
                    hard = ?limit.hard,
                    error = %e,
                    "could not raise the open files limit to the hard limit; each proxied connection takes two"
                ),
            }
            match Agent::start(config).await {
                Ok(agent) => agent.run_until_signal().await.map_err(anyhow::Error::new),
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
        Command::Members { status, api } => return cli_exit(cli::members(&api, status).await),
        Command::Services { name, all, api } => return cli_exit(cli::services(name.as_deref(), all, &api).await),
        Command::Resolve { name, api } => return cli_exit(cli::resolve(&name, &api).await),
        Command::Stats(api) => return cli_exit(cli::stats(&api).await),
        Command::Watch { service, count, api } => return cli_exit(cli::watch(&service, count, &api).await),
        Command::Keyring { command } => return cli_exit(cli::keyring::keyring(&command).await),
        Command::Ca { command: cli::CaCommand::Init { dir, json } } => cli::ca_init(&dir, json),
        Command::Cert { command: cli::CertCommand::Issue { ca_dir, name, services, out, json } } => {
            cli::cert_issue(&ca_dir, &name, &services, &out, json)
        }
        Command::Keygen { json } => {
            let key = Keyring::generate_base64();
            if json {
                println!("{}", serde_json::json!({ "key": key }));
            } else {
                println!("{key}");
            }
            Ok(())
        }
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man => cli::man(&mut std::io::stdout()).map_err(Into::into),
        Command::SampleApp { listen, name } => match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                eprintln!("murmur: sample app {name} listening on {listen}");
                tokio::select! {
                    _ = murmur::demo::sample_app(listener, name) => Err(anyhow::anyhow!("the sample app stopped")),
                    _ = shutdown_signal() => Ok(()),
                }
            }
            Err(e) => Err(anyhow::anyhow!("--listen: cannot bind {listen}: {e}")),
        },
        Command::Simulate(args) => match args.config() {
            Ok(config) => {
                let report = murmur::simulate::run(config);
                if args.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print!("{}", report.table());
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("murmur: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Demo => {
            init_logs(false, "warn");
            murmur::demo::run().await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("murmur: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The exit status of a command that talks to an agent.
fn cli_exit(result: Result<(), cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("murmur: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
