//! `zdd logs`: the live slot's log by default, `-n`, `--since`, a TARGET
//! that names nothing, the app's control characters escaped, and `-f`
//! across a deploy that swaps slots, ended by SIGINT or by a closed
//! stdout with exit 0, and across a keeper restart; `zdd logs --deploy
//! [COMMIT]`, each attempt's output.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// `zdd logs ARGS` running, its stdout read line by line into a channel.
fn spawn_logs(p: &Project, args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(zdd_bin())
        .arg("--config")
        .arg(p.config_path())
        .arg("logs")
        .args(args)
        .current_dir(p.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until one satisfies `want` (all of them, that one
/// last), or a failure after `limit` naming what came.
fn lines_until(rx: &Receiver<String>, limit: Duration, want: impl Fn(&str) -> bool) -> Vec<String> {
    let t = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(t.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no such line within {limit:?}; got:\n{}", seen.join("\n"));
}

/// Wait for `child` to exit, at most `limit`; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("zdd logs did not exit within {limit:?}");
}

#[test]
fn before_any_deploy_logs_say_so_and_an_unknown_target_names_what_there_is() {
    let p = Project::new("");
    let r = p.zdd(&["logs"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("nothing is deployed yet"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "one sentence: {r:?}");
    let r = p.zdd(&["logs", "nosuch"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("\"nosuch\"") && r.stderr.contains("(a, b)"),
        "{r:?}"
    );
    // Not a path: nothing outside the logs is ever read.
    let r = p.zdd(&["logs", "../state"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = p.zdd(&["logs", "-n", "many"]);
    assert_eq!(r.code, 2, "{r:?}");
    // A slot with no log yet: nothing to print, no error.
    let r = p.zdd(&["logs", "b"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
}

#[test]
fn logs_show_the_live_apps_lines_escaped_and_follow_it_across_a_swap() {
    let _heavy = heavy();
    let mut p = Project::new("");
    // v1 tries to set root's terminal title.
    p.commit(
        "v1",
        "printf 'hello \\033]0;owned\\007 from slot %s\\n' \"$ZDD_SLOT\"",
    );
    p.go_live();
    let listening_a = format!("app v1 listening on 127.0.0.1:{}", p.ports[0]);
    // The app's lines reach the log through its keeper: wait for them.
    let log_a = p.root().join("logs/a.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log_a)
            .is_ok_and(|t| t.contains(&listening_a))),
        "{}",
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );

    let r = p.zdd(&["logs"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&listening_a), "{r:?}");
    assert!(
        r.stdout.contains("hello \\x1b]0;owned\\x07 from slot a"),
        "escaped: {r:?}"
    );
    assert!(
        !r.stdout.contains('\x1b') && !r.stdout.contains('\x07'),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(": start of "),
        "zdd's marker lines too: {r:?}"
    );
    assert_eq!(p.zdd(&["logs", "a"]).stdout, r.stdout, "the live slot is a");

    let r = p.zdd(&["logs", "-n", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    let file = std::fs::read_to_string(&log_a).unwrap();
    let last = file.lines().last().unwrap();
    assert!(r.stdout.ends_with(&format!("{last}\n")), "{r:?}\n{file}");
    let r = p.zdd(&["logs", "-n", "0"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    let r = p.zdd(&["logs", "--since", "1h"]);
    assert!(r.code == 0 && r.stdout.contains(&listening_a), "{r:?}");

    let r = p.zdd(&["logs", "nosuch"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("(a, b)"), "{r:?}");

    // A reader that goes away ends `-f` quietly, even while nothing new
    // comes (`zdd logs -f | head -1`).
    let mut gone = Command::new(zdd_bin())
        .arg("--config")
        .arg(p.config_path())
        .args(["logs", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut head = BufReader::new(gone.stdout.take().unwrap());
    let mut line = String::new();
    head.read_line(&mut line).unwrap();
    assert!(!line.is_empty());
    drop(head);
    assert_eq!(exit_within(&mut gone, Duration::from_secs(10)), Some(0));

    // -f from before a deploy that swaps to slot b, whose log holds an
    // earlier run's lines.
    std::fs::write(
        p.root().join("logs/b.log"),
        "=== zdd 2026-01-01T00:00:00Z: start of an earlier release in slot b\nan earlier run's line\n",
    )
    .unwrap();
    // v2 prints a line that looks like zdd's start marker: it moves nothing.
    let v2 = p.commit(
        "v2",
        "echo '=== zdd 2026-01-01T00:00:01Z: start of a forged release in slot b'",
    );
    let (mut follower, rx) = spawn_logs(&p, &["-f", "-n", "5"]);
    let first = lines_until(&rx, Duration::from_secs(20), |l| l.contains(&listening_a));
    assert!(first.len() <= 5, "{first:?}");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    let marker = format!("=== zdd: now following slot b (commit {}", &v2[..12]);
    lines_until(&rx, Duration::from_secs(20), |l| l.starts_with(&marker));
    let listening_b = format!("app v2 listening on 127.0.0.1:{}", p.ports[1]);
    let after = lines_until(&rx, Duration::from_secs(20), |l| l.contains(&listening_b));
    assert!(
        after[0].starts_with("=== zdd ")
            && after[0].contains(&format!(": start of {} in slot b", &v2[..12])),
        "slot b's log from its app's start, as zdd recorded it: {after:?}"
    );
    assert!(
        after.iter().any(|l| l.contains("a forged release")),
        "the app's own line, printed as the app's: {after:?}"
    );
    assert!(
        !after.iter().any(|l| l.contains("an earlier run's line")),
        "from the new start marker on, not from the file's start: {after:?}"
    );
    kill(follower.id() as i32, nix::sys::signal::Signal::SIGINT);
    assert_eq!(exit_within(&mut follower, Duration::from_secs(10)), Some(0));

    // Slot a's own log is still there by name, b's is the live one now.
    let r = p.zdd(&["logs", "a"]);
    assert!(r.code == 0 && r.stdout.contains(&listening_a), "{r:?}");
    let r = p.zdd(&["logs", "-n", "1"]);
    assert!(r.code == 0 && r.stdout.contains(&listening_b), "{r:?}");
    // Nothing was written in the last second once the app is quiet.
    std::thread::sleep(Duration::from_millis(2500));
    let r = p.zdd(&["logs", "--since", "1s"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
}

#[test]
fn logs_follow_goes_on_across_a_keeper_restart_of_the_live_app() {
    let p = Project::live_v1("");
    let listening = format!("app v1 listening on 127.0.0.1:{}", p.ports[0]);
    let (mut follower, rx) = spawn_logs(&p, &["-f", "-n", "3"]);
    lines_until(&rx, Duration::from_secs(20), |l| l.contains(&listening));
    let apps = p.app_pids();
    assert_eq!(apps.len(), 1, "{apps:?}");
    kill(apps[0], nix::sys::signal::Signal::SIGKILL);
    // The keeper's lines, then the new process's own.
    let after = lines_until(&rx, Duration::from_secs(20), |l| l.contains(&listening));
    assert!(
        after
            .iter()
            .any(|l| l.contains("the app exited on its own (signal: 9 (SIGKILL))")),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("starting it again at once")),
        "{after:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || p
            .app_pids()
            .iter()
            .any(|pid| !apps.contains(pid))),
        "a new app process: {:?}",
        p.app_pids()
    );
    kill(follower.id() as i32, nix::sys::signal::Signal::SIGINT);
    assert_eq!(exit_within(&mut follower, Duration::from_secs(10)), Some(0));
}

#[test]
fn logs_deploy_shows_each_attempts_output_a_failed_builds_error_included() {
    let (p, v2) = Project::live_v1_with_v2("");
    let r = p.zdd(&["logs", "--deploy", "nosuch"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("\"nosuch\""), "{r:?}");
    assert!(r.stderr.contains("deploy of"), "names what is kept: {r:?}");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    let broken = p.commit_with(
        "v3",
        "",
        "echo compiling v3; echo 'error[E0425]: v3 does not build' >&2; exit 7\n",
    );
    let r = p.zdd(&["deploy", &broken]);
    assert_eq!(r.code, 1, "{r:?}");
    let tail = r.stderr.split("last lines of").nth(1).unwrap_or_default();
    assert!(
        tail.contains("/logs/deploys/") && tail.contains("v3 does not build"),
        "the failure quotes the attempt's own file: {r:?}"
    );

    // No COMMIT: the last attempt, the failed one, from its first line to
    // how it ended.
    let d = p.zdd(&["logs", "--deploy"]);
    assert_eq!(d.code, 0, "{d:?}");
    let lines: Vec<&str> = d.stdout.lines().collect();
    assert!(
        lines[0].contains(&format!("deploy of {broken} to slot a")),
        "{d:?}"
    );
    for want in [
        "checked out",
        "build of",
        "compiling v3",
        "error[E0425]: v3 does not build",
    ] {
        assert!(d.stdout.contains(want), "{want:?} in {d:?}");
    }
    assert!(
        lines
            .last()
            .unwrap()
            .contains("the deploy failed: the build failed"),
        "{d:?}"
    );
    // The build's output is the attempt's, not the app's log.
    let log_a = std::fs::read_to_string(p.root().join("logs/a.log")).unwrap();
    assert!(!log_a.contains("compiling v3"), "{log_a}");

    // -n: its last lines.
    let d = p.zdd(&["logs", "--deploy", "-n", "1"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert_eq!(d.stdout.lines().count(), 1, "{d:?}");
    assert!(d.stdout.contains("failed"), "{d:?}");

    // By a sha's prefix: v2's attempt, its build and the app's start
    // output up to the swap.
    let d = p.zdd(&["logs", "--deploy", &v2[..8]]);
    assert_eq!(d.code, 0, "{d:?}");
    for want in [
        format!("deploy of {v2} to slot b"),
        format!("building {v2}"),
        "the app's output, from".to_string(),
        format!("app v2 listening on 127.0.0.1:{}", p.ports[1]),
        format!("deployed {}", &v2[..12]),
    ] {
        assert!(d.stdout.contains(&want), "{want:?} in {d:?}");
    }
    assert!(!d.stdout.contains("v3"), "{d:?}");

    // A rollback is an attempt too, and a commit never deployed is none.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    let d = p.zdd(&["logs", "--deploy"]);
    assert!(
        d.stdout.lines().next().unwrap().contains("rollback of"),
        "{d:?}"
    );
    let never = p.commit("v4", "");
    let r = p.zdd(&["logs", "--deploy", &never]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no output of an attempt to deploy") && r.stderr.contains("rollback of"),
        "names the kept ones, newest first: {r:?}"
    );
}

/// A build that writes without end fills no disk: its attempt's file never
/// passes the cap while it runs (the build itself looks), and keeps the
/// build's head and its end, where the error would be.
#[test]
fn a_builds_output_is_capped_while_it_runs_and_its_end_is_kept() {
    let p = Project::live_v1("");
    let seen = p.path().join("seen-size");
    let build = format!(
        "echo the first line of the build\n\
         yes 'a build that writes without end, line after line' | head -c 8000000\n\
         echo the last line of the build\n\
         sleep 0.2\n\
         stat -c %s \"$ZDD_ROOT\"/logs/deploys/*-deploy-$ZDD_COMMIT.log > {}\n",
        seen.display()
    );
    let v2 = p.commit_with("v2", "", &build);
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    let size: u64 = std::fs::read_to_string(&seen)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        size <= 4 * 1024 * 1024,
        "the attempt's file while the build ran: {size} bytes"
    );
    let d = p.zdd(&["logs", "--deploy"]);
    assert_eq!(d.code, 0, "{d:?}");
    for want in [
        "the first line of the build",
        "bytes of the build's output cut out here",
        "the last line of the build",
    ] {
        assert!(d.stdout.contains(want), "{want:?} in the attempt's file");
    }
    assert!(
        d.stdout.len() <= 4 * 1024 * 1024 + 4096,
        "{}",
        d.stdout.len()
    );
    p.kill_everything();
}
