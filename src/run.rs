//! The program: parse the command line, set up logging and zdd's own
//! signal handlers, run the command, print any error once, and turn it
//! into the exit code. The keeper's command line is read before clap.

use std::io::Write;

use clap::Parser;

use crate::cli::{Cli, Command, MaintenanceAction};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::{
    config, deploy, error, init, keeper, logview, maintenance, named, nginx, report, signals,
};

/// Parse the command line, run the command, print any error once, and
/// return the exit code.
pub fn run() -> i32 {
    // Before anything else runs: no child inherits what zdd was given.
    crate::process::seal_inherited_descriptors();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "keep") {
        // The keeper (zdd starts it): its own small loop, no clap, no log
        // of its own (its stderr is the app's log).
        return keeper::run(&args[2..]);
    }
    let cli = Cli::parse_from(args);
    init_logging(cli.verbose, cli.quiet);
    // Commands that start or swap processes finish or undo their work on
    // SIGINT/SIGTERM/SIGHUP, and `zdd logs -f` ends on them quietly (exit
    // 0); the others just end.
    let handles_signals = matches!(
        cli.command,
        Command::Deploy { .. }
            | Command::Rollback { .. }
            | Command::Restart { .. }
            | Command::Start { .. }
            | Command::Up { .. }
            | Command::Logs { follow: true, .. }
    );
    if handles_signals {
        if let Err(e) = signals::install() {
            eprintln!("zdd: cannot install signal handlers: {e}");
            return error::exit::NEEDS_ATTENTION;
        }
    }
    let code = match dispatch(cli) {
        Ok(()) => error::exit::OK,
        Err(e) => {
            eprintln!("zdd: {}", crate::text::printable(&e.to_string()));
            e.code()
        }
    };
    if log::log_enabled!(log::Level::Debug) {
        log::debug!("peak RSS {} KiB", peak_rss_kib().unwrap_or(0));
    }
    code
}

/// `VmHWM` of this process: its peak resident set size.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dispatch(cli: Cli) -> Result<()> {
    let explicit = cli.config.as_deref();
    let load = || -> Result<Config> {
        let path = Config::locate(explicit).ok_or_else(|| {
            Error::Usage(format!(
                "no {} in this folder; pass --config PATH, set ZDD_CONFIG, or create one with `zdd init`",
                config::DEFAULT_FILE
            ))
        })?;
        Config::load(&path)
    };
    // For commands that also work without a config file.
    let load_optional = || -> Result<Option<Config>> {
        Config::locate(explicit)
            .map(|p| Config::load(&p))
            .transpose()
    };
    match cli.command {
        Command::Deploy { commit, wait } => {
            deploy::deploy(&load()?, commit.as_deref(), wait.lock_wait())
        }
        Command::Rollback {
            commit,
            wait,
            because,
            if_live,
        } => deploy::rollback(
            &load()?,
            commit.as_deref(),
            wait.lock_wait(),
            because.as_deref(),
            if_live,
        ),
        Command::Restart { wait } => deploy::restart(&load()?, wait.lock_wait()),
        Command::Up { wait } => deploy::up(load_optional()?.as_ref(), wait.lock_wait()),
        Command::Start {
            name,
            dir,
            port,
            cmd,
            wait,
        } => named::start(
            load_optional()?.as_ref(),
            &name,
            &dir,
            port,
            &cmd,
            wait.lock_wait(),
        ),
        Command::Stop { name, wait } => {
            named::stop(load_optional()?.as_ref(), &name, wait.lock_wait())
        }
        Command::Status { json } => report::status(&load()?, json),
        Command::History { json } => report::history(&load()?, json),
        Command::Releases { json } => report::releases(&load()?, json),
        Command::Logs {
            deploy: Some(commit),
            lines,
            ..
        } => crate::attempts::show(
            &crate::named::root_of(load_optional()?.as_ref())?,
            commit.as_deref(),
            lines,
        ),
        Command::Logs {
            target,
            lines,
            follow,
            since,
            deploy: None,
        } => logview::run(
            load_optional()?.as_ref(),
            &logview::Request {
                target: target.as_deref(),
                lines,
                follow,
                since,
            },
        ),
        Command::Nginx {
            part,
            write,
            reload,
        } => nginx::run(&load()?, part, write, reload),
        Command::Maintenance { action } => match action {
            MaintenanceAction::On { message, wait } => {
                maintenance::on(&load()?, message.as_deref(), wait.lock_wait())
            }
            MaintenanceAction::Off { wait } => maintenance::off(&load()?, wait.lock_wait()),
        },
        Command::Init => init::init(explicit),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "zdd", &mut script);
            crate::text::write_stdout(&script)
                .map_err(Error::io("cannot write the completion script to", "stdout"))
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(Error::io("cannot render the man page to", "memory"))?;
            crate::text::write_stdout(&page)
                .map_err(Error::io("cannot write the man page to", "stdout"))
        }
    }
}

/// Progress goes to stderr as plain lines; `RUST_LOG` overrides the level.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("warn,zdd={level}")),
    )
    .format(|buf, record| {
        let text = record.args().to_string();
        let text = crate::text::printable(&text);
        match record.level() {
            log::Level::Info => writeln!(buf, "zdd: {text}"),
            log::Level::Warn => writeln!(buf, "zdd: warning: {text}"),
            log::Level::Error => writeln!(buf, "zdd: error: {text}"),
            level => writeln!(buf, "zdd: {}: {text}", level.as_str().to_lowercase()),
        }
    })
    .target(env_logger::Target::Stderr)
    .init();
}
