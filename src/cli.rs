//! The command line as the user typed it (clap derive); no I/O here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::lock::LockWait;

#[derive(Debug, Parser)]
#[command(
    name = "zdd",
    version,
    about = "Zero-downtime deploys of a web app on one host: two slots behind nginx, steered by a switch nginx resolves when it connects",
    after_help = "Exit codes: 0 done or nothing to do; 1 failed, the version that was serving still serves; \
2 bad usage, config or input, nothing changed; 3 another zdd holds the lock; 4 zdd could not finish, state needs attention; \
5 (status) the site is not serving."
)]
pub struct Cli {
    /// Config file [default: ./zdd.toml]
    #[arg(short, long, global = true, env = "ZDD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More detail on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy COMMIT (sha, tag or branch; default: tip of `branch`) to the idle slot
    Deploy {
        /// What to deploy [default: the tip of the configured branch]
        #[arg(value_name = "COMMIT")]
        commit: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Bring back the previous good release, or COMMIT's kept release (no build)
    Rollback {
        /// A kept release to bring back (sha, tag or branch) [default: the newest good one older than the live one]
        #[arg(value_name = "COMMIT")]
        commit: Option<String>,
        #[command(flatten)]
        wait: Wait,
        /// Why, for the history (a keeper's automatic rollback says so)
        #[arg(long, hide = true, value_name = "REASON")]
        because: Option<String>,
        /// Only while this keeper's app is the live one (a keeper's rollback)
        #[arg(long, hide = true, value_name = "SLOT:KEEPER_PID", value_parser = parse_if_live)]
        if_live: Option<IfLive>,
    },
    /// Start the live release again on the idle slot with the config as it is now, then swap (zero downtime)
    Restart {
        #[command(flatten)]
        wait: Wait,
    },
    /// At boot: start the live slot and the recorded named processes that do not run (no fetch, no build)
    Up {
        #[command(flatten)]
        wait: Wait,
    },
    /// Start CMD in DIR on PORT as a named, tracked process and check its health
    Start {
        /// Name to track it by ([A-Za-z0-9_-]+)
        name: String,
        /// Folder to run it in
        dir: PathBuf,
        /// Port it listens on (passed as $PORT)
        port: u16,
        /// Command and arguments [default: `start` from the config]
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop a named process or slot (a, b): stop signal, wait, SIGKILL after the timeout
    Stop {
        /// A name given to `zdd start`, or slot `a` or `b`
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Show the live slot, the `zdd start` processes, health, nginx and drift; exit 5 when the site is not serving
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// List the kept releases, newest first: commit, when built, size, status, slot
    Releases {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show recorded deploys, rollbacks and failed attempts
    History {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the last lines of the live slot's log, a slot's or a `zdd start` process's; -f follows it; --deploy prints a deploy attempt's output
    Logs {
        /// A slot (`a`, `b`) or a name given to `zdd start` [default: the live slot, followed across swaps with -f]
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        /// How many of the last lines to print [default: 50; with --since: all of those; with --deploy: the whole attempt]
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Then print what is appended, across rotations (and swaps, without TARGET), until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only what was written in the last DURATION (e.g. 10m, 2h)
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
        since: Option<Duration>,
        /// Instead: the output of the last deploy, rollback or restart attempt, or of COMMIT's last (checkout, build, hooks, the app's start), failed ones included
        #[arg(long, value_name = "COMMIT", num_args = 0..=1, conflicts_with_all = ["target", "follow", "since"])]
        deploy: Option<Option<String>>,
    },
    /// Render the nginx config for both slots (the whole site, or the parts for your own server blocks)
    Nginx {
        /// What to render [default: site; with --write, every part that has an output set]
        #[arg(long, value_enum)]
        part: Option<crate::nginx::Part>,
        /// Write it atomically to its output (`nginx.output`, `nginx.upstreams_output`, `nginx.snippet_output`) instead of stdout
        #[arg(long)]
        write: bool,
        /// Run the nginx test command, then signal the nginx master to reload
        #[arg(long)]
        reload: bool,
    },
    /// Close the site behind nginx's maintenance page (503), or open it again
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceAction,
    },
    /// Write a commented starter zdd.toml in the current folder, or at -c PATH
    Init,
    /// Print a shell completion script (e.g. `zdd completions bash > /etc/bash_completion.d/zdd`)
    Completions {
        /// The shell to complete in
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; e.g. `zdd man > /usr/local/share/man/man1/zdd.1`)
    Man,
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceAction {
    /// nginx answers every public request with 503 and the page; deploys and rollbacks go on
    On {
        /// The text on the page (HTML-escaped)
        #[arg(long, short)]
        message: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// nginx sends requests to the live slot again
    Off {
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Wait {
    /// Wait for another zdd to finish instead of exiting 3 (optionally at most DURATION)
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "forever",
        value_parser = parse_wait
    )]
    pub wait: Option<WaitFor>,
}

#[derive(Debug, Clone, Copy)]
pub enum WaitFor {
    Forever,
    AtMost(Duration),
}

impl Wait {
    /// In the form `Lock::acquire` takes.
    pub fn lock_wait(&self) -> LockWait {
        match self.wait {
            None => LockWait::No,
            Some(WaitFor::Forever) => LockWait::Forever,
            Some(WaitFor::AtMost(d)) => LockWait::AtMost(d),
        }
    }
}

/// A keeper's `--if-live=SLOT:KEEPER_PID`: the slot it keeps, and itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfLive {
    pub slot: crate::slot::Slot,
    pub keeper_pid: i32,
}

impl std::fmt::Display for IfLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.slot, self.keeper_pid)
    }
}

fn parse_if_live(s: &str) -> Result<IfLive, String> {
    let (slot, pid) = s
        .split_once(':')
        .ok_or_else(|| format!("expected SLOT:KEEPER_PID, got {s:?}"))?;
    Ok(IfLive {
        slot: crate::slot::Slot::parse(slot).ok_or_else(|| format!("no slot {slot:?}: a or b"))?,
        keeper_pid: pid
            .parse()
            .ok()
            .filter(|&p| p > 1)
            .ok_or_else(|| format!("{pid:?} is not a keeper's pid"))?,
    })
}

fn parse_wait(s: &str) -> Result<WaitFor, String> {
    if s == "forever" {
        Ok(WaitFor::Forever)
    } else {
        let d = crate::config::parse_duration(s)?;
        let (min, max) = crate::config::duration_bounds("--wait");
        if d < min || d > max {
            return Err(format!(
                "--wait takes at most {} (or no value: wait as long as it takes)",
                humantime::format_duration(max)
            ));
        }
        Ok(WaitFor::AtMost(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_takes_an_optional_duration() {
        let cli = Cli::try_parse_from(["zdd", "deploy", "--wait", "abc"]).unwrap();
        match cli.command {
            Command::Deploy { commit, wait } => {
                assert_eq!(commit.as_deref(), Some("abc"));
                assert!(matches!(wait.wait, Some(WaitFor::Forever)));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["zdd", "rollback", "--wait=2s"]).unwrap();
        match cli.command {
            Command::Rollback { wait, .. } => {
                assert_eq!(wait.lock_wait(), LockWait::AtMost(Duration::from_secs(2)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_keepers_if_live_is_parsed_once() {
        let cli = Cli::try_parse_from(["zdd", "rollback", "--if-live=b:4242"]).unwrap();
        match cli.command {
            Command::Rollback { if_live, .. } => assert_eq!(
                if_live,
                Some(IfLive {
                    slot: crate::slot::Slot::B,
                    keeper_pid: 4242
                })
            ),
            other => panic!("{other:?}"),
        }
        for bad in ["c:12", "a:x", "a", "a:1"] {
            let e = Cli::try_parse_from(["zdd", "rollback", &format!("--if-live={bad}")]);
            assert_eq!(e.unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn logs_takes_a_target_a_count_follow_and_a_duration() {
        let cli = Cli::try_parse_from(["zdd", "logs", "worker", "-n", "0", "-f", "--since", "10m"])
            .unwrap();
        match cli.command {
            Command::Logs {
                target,
                lines,
                follow,
                since,
                deploy: None,
            } => {
                assert_eq!(target.as_deref(), Some("worker"));
                assert_eq!(lines, Some(0));
                assert!(follow);
                assert_eq!(since, Some(Duration::from_secs(600)));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["zdd", "logs"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Logs {
                target: None,
                lines: None,
                follow: false,
                since: None,
                deploy: None,
            }
        ));
        let deploy = |args: &[&str]| match Cli::try_parse_from(["zdd", "logs"].iter().chain(args))
            .map(|c| c.command)
        {
            Ok(Command::Logs { deploy, lines, .. }) => Ok((deploy, lines)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.exit_code()),
        };
        assert_eq!(deploy(&["--deploy"]), Ok((Some(None), None)));
        assert_eq!(
            deploy(&["--deploy", "v2", "-n", "5"]),
            Ok((Some(Some("v2".into())), Some(5)))
        );
        for clash in [
            &["--deploy", "-f"][..],
            &["a", "--deploy"],
            &["--deploy", "--since", "1h"],
        ] {
            assert_eq!(deploy(clash), Err(2), "{clash:?}");
        }
        for bad in [&["-n", "many"][..], &["-n", "-1"], &["--since", "soon"]] {
            let e = Cli::try_parse_from(["zdd", "logs"].iter().chain(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn option_like_commit_is_rejected_by_the_parser() {
        let e = Cli::try_parse_from(["zdd", "deploy", "--upload-pack=touch /tmp/x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
