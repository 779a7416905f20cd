//! `zdd logs`: the live slot's log by default, `-n`, `--since`, a TARGET
//! that names nothing, the app's control characters escaped, and `-f`
//! across a deploy that swaps slots, ended by SIGINT or by a closed
//! stdout with exit 0.

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

    // -f from before a deploy that swaps to slot b.
    let v2 = p.commit("v2", "");
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
            && after[0].contains(": start of ")
            && after[0].contains("in slot b"),
        "slot b's log from its app's start: {after:?}"
    );
    assert!(!after.iter().any(|l| l.contains("building")), "{after:?}");
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
