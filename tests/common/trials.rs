//! The harness of the test files whose tests need something this machine may lack: a
//! real client (Prometheus, vmagent, py-consul, chromium), a system tool, or root. Those
//! files set `harness = false` and list their tests with [`trial`] (libtest-mimic), so a
//! test whose needs are missing shows as `ignored`, with the reason, instead of passing
//! without running. Under CI (`CI` set), a missing tool fails the test instead: .ci/run
//! installs every one. Root is the exception: without it a test is ignored everywhere.

use std::future::Future;
use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Trial};

/// What a test needs: `Ok` when this machine has it, else what is missing and how to
/// get it.
pub type Needs = Result<(), String>;

/// Nothing beyond the test itself.
pub fn nothing() -> Needs {
    Ok(())
}

/// `Ok` when `program` with `args` runs and succeeds, else `missing`.
fn succeeds(program: &str, args: &[&str], missing: String) -> Needs {
    let ran = Command::new(program).args(args).output();
    if ran.is_ok_and(|o| o.status.success()) {
        Ok(())
    } else {
        Err(missing)
    }
}

/// `program` on the PATH, from Debian's `package`.
pub fn program(program: &str, package: &str) -> Needs {
    let lookup = format!("command -v {program}");
    succeeds("sh", &["-c", &lookup], format!("no `{program}` (apt-get install {package})"))
}

/// Python 3 with `module`, from PyPI's `package`.
pub fn python_module(module: &str, package: &str) -> Needs {
    let import = format!("import {module}");
    succeeds("python3", &["-c", &import], format!("no python3 module `{module}` (pip install {package})"))
}

/// Whether this runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A test named `name` that runs `test` when `needs` is met. When it is not, the test is
/// ignored (and says why on stderr), except under CI, where it fails saying what .ci/run
/// should have installed. `needs_root` is ignored everywhere without root.
pub fn trial(name: &'static str, needs: Needs, needs_root: bool, test: fn()) -> Trial {
    let ci = std::env::var_os("CI").is_some();
    let ignored = match (&needs, needs_root && !is_root()) {
        (_, true) => Some("it needs root".to_owned()),
        (Err(why), false) if !ci => Some(why.clone()),
        _ => None,
    };
    if let Some(why) = &ignored {
        eprintln!("*** {name} is ignored: {why} ***");
    }
    Trial::test(name, move || match needs {
        Err(why) => Err(format!("CI must provide what this test needs (.ci/run installs it): {why}").into()),
        Ok(()) => {
            test();
            Ok(())
        }
    })
    .with_ignored_flag(ignored.is_some())
}

/// Runs the listed tests with the command line's filters, as `cargo test` passes them.
pub fn run(trials: Vec<Trial>) -> ExitCode {
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// Runs an async test body on the runtime the other tests use: multi-thread, 2 workers.
pub fn block_on<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(test)
}
