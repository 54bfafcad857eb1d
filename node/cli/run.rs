//! What the `murmur` binary does with its command line: start an agent, run a client
//! command against one, or the demo, the sample app and the simulator. `node/main.rs`
//! only parses the arguments and calls [`run`].

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use super::{ca_init, cert_issue, completions, keyring, man, members, resolve, services, stats, watch};
use super::{CaCommand, CertCommand, Cli, CliError, Command};
use crate::config::ProcessEnv;
use crate::gossip::Keyring;
use crate::{Agent, Config};

fn init_logs(json: bool, default_filter: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one command line: what `murmur` does with its arguments, returning its exit
/// status (listed in `murmur --help`). Builds the runtime each command runs on: an
/// agent's has `--threads` workers (its config is read first, so a bad one exits 2
/// before anything starts); the demo's has one per core, as it runs five agents and
/// their traffic in one process; every other command needs one thread.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Agent(args) => {
            let config = match Config::load(&args, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("murmur: config error: {e}");
                    return ExitCode::from(2);
                }
            };
            let threads = config.threads;
            on_runtime(Some(threads), async move { exit_status(run_agent(config).await) })
        }
        command => {
            let threads = if matches!(command, Command::Demo) { None } else { Some(1) };
            on_runtime(threads, run_tool(command))
        }
    }
}

/// Runs `main` on a runtime with `threads` workers (one: a current-thread runtime;
/// `None`: one per core).
fn on_runtime(threads: Option<usize>, main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let built = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    match built {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("murmur: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Starts the agent and runs it until SIGTERM or SIGINT.
async fn run_agent(config: Config) -> anyhow::Result<()> {
    init_logs(config.log.json, &config.log.filter);
    match crate::rlimit::raise_open_files() {
        (limit, None) => tracing::debug!(soft = ?limit.soft, hard = ?limit.hard, "open files limit"),
        (limit, Some(e)) => tracing::warn!(
            soft = ?limit.soft,
            hard = ?limit.hard,
            error = %e,
            "could not raise the open files limit to the hard limit; each proxied connection takes two"
        ),
    }
    let agent = Agent::start(config).await?;
    agent.run_until_signal().await?;
    Ok(())
}

/// Every command but `agent`.
async fn run_tool(command: Command) -> ExitCode {
    let result = match command {
        Command::Agent(_) => unreachable_command(),
        Command::Demo => {
            init_logs(false, "warn");
            crate::demo::run().await
        }
        Command::Members { status, api } => return cli_exit(members(&api, status).await),
        Command::Services { name, all, api } => return cli_exit(services(name.as_deref(), all, &api).await),
        Command::Resolve { name, api } => return cli_exit(resolve(&name, &api).await),
        Command::Stats(api) => return cli_exit(stats(&api).await),
        Command::Watch { service, count, api } => return cli_exit(watch(&service, count, &api).await),
        Command::Keyring { command } => return cli_exit(keyring::keyring(&command).await),
        Command::Ca { command: CaCommand::Init { dir, json } } => ca_init(&dir, json),
        Command::Cert { command: CertCommand::Issue { ca_dir, name, services, out, json } } => {
            cert_issue(&ca_dir, &name, &services, &out, json)
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
            completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man => man(&mut std::io::stdout()).map_err(Into::into),
        Command::SampleApp { listen, name } => match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                eprintln!("murmur: sample app {name} listening on {listen}");
                tokio::select! {
                    _ = crate::demo::sample_app(listener, name) => Err(anyhow::anyhow!("the sample app stopped")),
                    _ = shutdown_signal() => Ok(()),
                }
            }
            Err(e) => Err(anyhow::anyhow!("--listen: cannot bind {listen}: {e}")),
        },
        Command::Simulate(args) => match args.config() {
            Ok(config) => {
                let report = crate::simulate::run(config);
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
    };
    exit_status(result)
}

/// `agent` reads its config before its runtime is built, in [`run`], and never reaches
/// [`run_tool`].
fn unreachable_command() -> anyhow::Result<()> {
    Err(anyhow::anyhow!("this command runs on its own runtime"))
}

/// 0, or 1 with the error and its causes on stderr.
fn exit_status(result: anyhow::Result<()>) -> ExitCode {
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
fn cli_exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("murmur: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
