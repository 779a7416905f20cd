//! Faults and bad input: for each, the exit code, one clear sentence, what
//! nginx serves, which processes run, and what the state file says.

use crate::support::*;
use std::time::{Duration, Instant};

fn short_health(p: &Project, timeout: &str) {
    p.edit_config(|c| c.replace("timeout = \"15s\"", &format!("timeout = \"{timeout}\"")));
}

fn last_history(p: &Project) -> serde_json::Value {
    p.history().last().unwrap().clone()
}

#[test]
fn unhealthy_new_version_is_stopped_and_the_old_one_keeps_serving() {
    let _heavy = heavy();
    let p = Project::live_v1("");
    short_health(&p, "2s");
    let bad = p.commit(
        "v2",
        "export APP_STATUS=500\necho 'v2 is broken on purpose'",
    );
    let load = Load::start(&p, &["v1"]);
    let r = p.zdd(&["deploy", &bad]);
    let report = load.finish();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "deploy of {} to slot b failed: not healthy after 2s",
            &bad[..12]
        )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("HTTP 500 (expected 200-299)"),
        "the last health response: {r:?}"
    );
    assert!(r.stderr.contains("slot a still serves"), "{r:?}");
    assert!(
        r.stderr.contains("v2 is broken on purpose"),
        "the log's last lines: {r:?}"
    );
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    let last = last_history(&p);
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["commit"], bad.as_str());
    assert_eq!(p.state()["slots"]["b"]["status"].as_str(), Some("failed"));

    // Cron does not retry the failed commit; naming it does.
    let r = p.zdd(&["deploy"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    let r = p.zdd(&["-v", "deploy"]);
    assert!(r.stderr.contains("which failed to deploy at"), "{r:?}");
    assert!(
        r.stderr.contains("not deploying it until main moves"),
        "{r:?}"
    );
}

#[test]
fn wrong_body_and_never_listening_fail_the_health_check() {
    let p = Project::live_v1("");
    short_health(&p, "1s");
    p.edit_config(|c| c.replace("[health]\n", "[health]\nexpect_body = \"v1\"\n"));
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("lacks \"v1\""), "{r:?}");

    p.edit_config(|c| c.replace("expect_body = \"v1\"\n", ""));
    let slow = p.commit("v3", "export APP_READY_DELAY_MS=60000");
    let r = p.zdd(&["deploy", &slow]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("not healthy after 1s (last check of http://127.0.0.1:"),
        "{r:?}"
    );
    assert!(r.stderr.contains("connection refused"), "{r:?}");
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);
    assert!(
        p.app_pids().len() == 1,
        "only slot a's app runs: {:?}",
        p.app_pids()
    );
}

#[test]
fn app_exiting_during_start_up_is_noticed_at_once() {
    let p = Project::live_v1("");
    let crash = p.commit(
        "v2",
        "export APP_EXIT_AFTER_MS=100 APP_READY_DELAY_MS=60000 APP_EXIT_CODE=7",
    );
    let t = Instant::now();
    let r = p.zdd(&["deploy", &crash]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "not after the 15 s health timeout: {:?}",
        t.elapsed()
    );
    assert!(
        r.stderr
            .contains("the app exited during start-up (exit status: 7)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("crashing on purpose"), "{r:?}");
    assert_eq!(p.served(), "v1");
}

#[test]
fn failed_build_starts_nothing() {
    let p = Project::live_v1("");
    let before = p.app_pids();
    let broken = p.commit_with("v2", "", "echo 'compiler says no' >&2\nexit 3\n");
    let r = p.zdd(&["deploy", &broken]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("the build failed (exit status: 3)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("compiler says no"), "{r:?}");
    assert_eq!(p.app_pids(), before, "nothing started or stopped");
    assert_eq!(p.served(), "v1");
    assert_eq!(last_history(&p)["outcome"], "failed");
}

#[test]
fn unknown_or_option_like_commit_changes_nothing() {
    let p = Project::live_v1("");
    let state = p.state_bytes();
    for (commit, msg) in [
        ("0123456789abcdef0123456789abcdef01234567", "unknown commit"),
        ("no-such-branch", "unknown commit \"no-such-branch\""),
        ("--upload-pack=touch /tmp/zdd-pwned", "is not a commit"),
        ("main..main", "unknown commit"),
        ("HEAD", "unknown commit"),
    ] {
        let r = p.zdd(&["deploy", "--", commit]);
        assert_eq!(r.code, 2, "{commit}: {r:?}");
        assert!(r.stderr.contains(msg), "{commit}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "one sentence: {r:?}");
    }
    let r = p.zdd(&["deploy", "--upload-pack=touch /tmp/zdd-pwned"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!std::path::Path::new("/tmp/zdd-pwned").exists());
    assert_eq!(p.state_bytes(), state, "state untouched");
    assert_eq!(p.served(), "v1");
}

#[test]
fn second_zdd_gets_exit_3_and_wait_waits() {
    let p = Project::new("");
    // A slow build keeps the first deploy holding the lock.
    p.commit_with("v1b", "", "sleep 2\n");
    let log = p.path().join("first.log");
    let mut first = p.spawn_zdd_logged(&["deploy"], &log);
    let lock = p.root().join("zdd.lock");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&lock)
            .is_ok_and(|s| s.lines().next() == Some(first.id().to_string().as_str()))
    }));
    // status says a deploy is in progress, and where, without calling it
    // interrupted.
    assert!(wait_until(Duration::from_secs(10), || p
        .zdd(&["status"])
        .stdout
        .contains("building")));
    let s = p.zdd(&["status"]);
    assert!(
        s.stdout.contains(&format!(
            "in progress: zdd deploy (pid {} since ",
            first.id()
        )) && s.stdout.contains("): building ")
            && s.stdout.contains(" in slot a; the state is changing"),
        "{s:?}"
    );
    assert!(!s.stdout.contains("interrupted"), "{s:?}");
    let j = p.status_json();
    assert_eq!(j["in_progress"]["pid"], first.id().to_string());
    assert!(
        j["in_progress"]["step"]
            .as_str()
            .unwrap()
            .starts_with("building "),
        "{j}"
    );
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("another zdd (pid {}) holds the lock", first.id())),
        "{r:?}"
    );
    let r = p.zdd(&["rollback", "--wait=100ms"]);
    assert_eq!(r.code, 3, "{r:?}");
    let r = p.zdd(&["-v", "deploy", "--wait"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(first.wait().unwrap().success());
    assert_eq!(
        r.stderr.matches("waiting for the lock held by pid").count(),
        1,
        "{r:?}"
    );
    assert_eq!(r.stdout, "", "the waiter found the tip already live: {r:?}");
    assert_eq!(p.served_direct(0), "v1b");
}

#[test]
fn sigkilled_zdd_leaves_no_stale_lock_and_the_next_deploy_recovers() {
    let _heavy = heavy();
    let p = Project::live_v1("");
    // Kill zdd while the new version is starting (it takes 1.5 s to listen).
    let v2 = p.commit("v2", "export APP_READY_DELAY_MS=1500");
    let log = p.path().join("killed.log");
    let mut z = p.spawn_zdd_logged(&["deploy", &v2], &log);
    // `started_at` is recorded with the app's process (not the build's).
    assert!(wait_until(Duration::from_secs(20), || p.state()["slots"]
        ["b"]
        .get("started_at")
        .is_some()));
    z.kill().unwrap();
    z.wait().unwrap();

    // status tells what is real: the stray b process.
    let s = p.status_json();
    let drift: Vec<String> = s["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(
        drift
            .iter()
            .any(|d| d.contains("slot b") && d.contains("interrupted deploy")),
        "{drift:?}"
    );

    // The next deploy takes the lock at once and ends with one healthy slot.
    let load = Load::start(&p, &["v1", "v2"]);
    let r = p.zdd(&["deploy", &v2]);
    let report = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("from an earlier run still runs; stopping it"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["b"]);
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    assert_eq!(p.status_json()["drift"].as_array().unwrap().len(), 0);
}

#[test]
fn killed_mid_swap_is_reconciled_to_the_slot_that_serves() {
    let p = Project::live_v1("");
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy", &v2]).code, 0);
    // Make the state look like zdd died after stopping a but before recording b.
    let text = String::from_utf8(p.state_bytes()).unwrap();
    let mut state: toml::Table = toml::from_str(&text).unwrap();
    state.insert("active".into(), "a".into());
    state.insert("next_deploy".into(), "b".into());
    let slots = state["slots"].as_table_mut().unwrap();
    slots["a"]
        .as_table_mut()
        .unwrap()
        .insert("status".into(), "live".into());
    slots["b"]
        .as_table_mut()
        .unwrap()
        .insert("status".into(), "starting".into());
    std::fs::write(
        p.root().join("state.toml"),
        toml::to_string(&state).unwrap(),
    )
    .unwrap();

    let s = p.status_json();
    let drift = s["drift"].to_string();
    assert!(drift.contains("slot a is live but not running"), "{drift}");
    assert!(drift.contains("records it as live"), "{drift}");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("interrupted mid-swap; slot b is live"),
        "{r:?}"
    );
    assert!(r.stdout.contains("already live"), "{r:?}");
    assert_eq!(p.listening_slots(), ["b"]);
    assert_eq!(p.state()["active"].as_str(), Some("b"));
}

#[test]
fn app_ignoring_sigterm_is_killed_with_its_children() {
    let p = Project::live_v1("");
    p.edit_config(|c| c.replace("[stop]\ntimeout = \"10s\"", "[stop]\ntimeout = \"1s\""));
    // v1 ignores SIGTERM and has a child that ignores it too.
    let stubborn = p.commit(
        "v1s",
        "export APP_IGNORE_TERM=1\nsh -c 'trap \"\" TERM; exec sleep 300' &",
    );
    assert_eq!(p.zdd(&["deploy", &stubborn]).code, 0);
    let slot_b_pids = p.app_pids();
    assert!(slot_b_pids.len() >= 2, "app and its child: {slot_b_pids:?}");
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("did not exit within 1s of SIGTERM; killed its process group"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v2");
    for pid in slot_b_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap()
                    .contains(") Z"),
            "pid {pid} of the old slot survived"
        );
    }
    assert_eq!(p.listening_slots(), ["a"]);
}

#[test]
fn reused_pid_is_never_signalled() {
    let p = Project::live_v1("");
    let pid = p.state()["slots"]["a"]["process"]["pid"]
        .as_integer()
        .unwrap();
    // The app dies behind zdd's back; an unrelated process now has "its" pid.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || p
        .listening_slots()
        .is_empty()));
    let mut other = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let text = String::from_utf8(p.state_bytes()).unwrap();
    let text = text.replace(&format!("pid = {pid}"), &format!("pid = {}", other.id()));
    std::fs::write(p.root().join("state.toml"), text).unwrap();

    let s = p.status_json();
    assert!(
        s["drift"]
            .to_string()
            .contains(&format!("recorded pid {} is not running", other.id())),
        "{s}"
    );
    let r = p.zdd(&["stop", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("slot a was not running"), "{r:?}");
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the unrelated process was not signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    assert_eq!(p.served(), "v2");
}

#[test]
fn foreign_listener_on_the_idle_port_is_left_alone() {
    let p = Project::live_v1("");
    let foreign = std::net::TcpListener::bind(("127.0.0.1", p.ports[1])).unwrap();
    let v2 = p.commit("v2", "");
    let state = p.state_bytes();
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "port {} of slot b is taken by pid {}",
            p.ports[1],
            std::process::id()
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains("slot a still serves"), "{r:?}");
    assert_eq!(p.state_bytes(), state);
    assert_eq!(p.served(), "v1");
    assert!(foreign.local_addr().is_ok());
    drop(foreign);
}

#[test]
fn corrupt_state_file_is_an_error_and_left_exactly_as_it_was() {
    let p = Project::live_v1("");
    let garbage = b"version = 1\nactive = \"a\"\n[slots.a\nport = oops\n".to_vec();
    std::fs::write(p.root().join("state.toml"), &garbage).unwrap();
    for args in [&["deploy"][..], &["rollback"], &["status"], &["stop", "a"]] {
        let r = p.zdd(args);
        assert_eq!(r.code, 4, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "state file {} is corrupt",
                p.root().join("state.toml").display()
            )),
            "{r:?}"
        );
        assert_eq!(p.state_bytes(), garbage);
    }
    assert_eq!(p.served(), "v1");
}

#[test]
fn broken_configs_name_file_line_and_column() {
    let p = Project::new("");
    let cfg = p.config_path().display().to_string();
    let cases: [(&str, &str, String); 8] = [
        (
            "unknown key",
            "\n[health]\n",
            "\n[health]\ntimeuot = \"1s\"\n".into(),
        ),
        (
            "three ports",
            &format!("ports = [{}, {}]", p.ports[0], p.ports[1]),
            format!("ports = [{}, {}, 9]", p.ports[0], p.ports[1]),
        ),
        (
            "a duration out of bounds",
            "interval = \"20ms\"",
            "interval = \"500000000 years\"".into(),
        ),
        (
            "server_name breaking out of its directive",
            "[nginx]\n",
            "[nginx]\nserver_name = \"x; include /etc/passwd\"\n".into(),
        ),
        (
            "probe_url that is not a URL",
            "[nginx]\n",
            "[nginx]\nprobe_url = \"not a url\"\n".into(),
        ),
        (
            "bad duration",
            "interval = \"20ms\"",
            "interval = \"fast\"".into(),
        ),
        (
            "equal ports",
            &format!("ports = [{}, {}]", p.ports[0], p.ports[1]),
            format!("ports = [{0}, {0}]", p.ports[0]),
        ),
        ("missing start", "start = \"./run.sh\"\n", String::new()),
    ];
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    for (what, from, to) in cases {
        let text = good.replacen(from, &to, 1);
        assert_ne!(text, good, "{what}");
        std::fs::write(p.config_path(), &text).unwrap();
        let r = p.zdd(&["deploy"]);
        assert_eq!(r.code, 2, "{what}: {r:?}");
        let line = r.stderr.lines().next().unwrap();
        assert!(line.starts_with(&format!("zdd: {cfg}:")), "{what}: {line}");
        let pos: Vec<&str> = line[format!("zdd: {cfg}:").len()..]
            .splitn(3, ':')
            .collect();
        assert!(
            pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
            "{what}: line:col in {line}"
        );
        assert!(
            !p.root().join("state.toml").exists(),
            "{what}: nothing written"
        );
    }
}

#[test]
fn failing_state_write_keeps_the_old_file_and_exits_4() {
    use std::os::unix::process::CommandExt;
    let p = Project::live_v1("");
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy", &v2]).code, 0);
    let state = p.state_bytes();
    // Rollback with a zero file-size limit: writing the new state fails
    // like a full disk does (EFBIG instead of ENOSPC).
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.arg("--config").arg(p.config_path()).arg("rollback");
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGXFSZ,
                nix::sys::signal::SigHandler::SigIgn,
            )
            .map_err(std::io::Error::from)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 0, 0)
                .map_err(std::io::Error::from)
        });
    }
    let r = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("cannot write the state file"), "{r:?}");
    assert!(
        r.stderr.contains("the previous state file is intact"),
        "{r:?}"
    );
    assert_eq!(p.state_bytes(), state, "old state intact");
    assert_eq!(p.served(), "v2", "the version that served still serves");
    assert_eq!(
        p.listening_slots(),
        ["b"],
        "the unrecorded new slot was stopped"
    );
}

#[test]
fn root_zdd_cannot_write_in_exits_2_and_changes_nothing() {
    let p = Project::new("");
    std::fs::create_dir_all(p.root()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(p.root(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = if is_root() {
        // root ignores permissions: run zdd as nobody instead.
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(zdd_bin());
        c
    } else {
        std::process::Command::new(zdd_bin())
    };
    cmd.arg("--config").arg(p.config_path()).arg("deploy");
    let r = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(r.code, 2, "{r:?}");
    let why = if is_root() {
        "belongs to uid 0, not to the user running zdd (uid 65534)"
    } else {
        "Permission denied"
    };
    assert!(
        r.stderr.contains(&p.root().display().to_string()) && r.stderr.contains(why),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_dir(p.root()).unwrap().count(),
        0,
        "nothing written"
    );
}

fn wait_for_log(log: &std::path::Path, needle: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(log)
            .is_ok_and(|s| s.contains(needle))),
        "never saw {needle:?} in:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn signal_during_the_build_stops_it_and_keeps_the_old_slot() {
    let p = Project::live_v1("");
    let slow = p.commit_with("v2", "", "echo build-started; sleep 30\n");
    let log = p.path().join("zdd.log");
    let mut z = p.spawn_zdd_logged(&["deploy", &slow], &log);
    assert!(
        wait_until(Duration::from_secs(30), || {
            last_attempt_log(&p).is_some_and(|t| t.contains("build-started"))
        }),
        "the build never started: {:?}",
        last_attempt_log(&p)
    );
    signal(&z, nix::sys::signal::Signal::SIGTERM);
    let status = z.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert!(stderr.contains("slot a still serves"), "{stderr}");
    assert_eq!(p.served(), "v1");
    assert_eq!(
        p.app_pids().len(),
        1,
        "the build's sleep was stopped too: {:?}",
        p.app_pids()
    );
    assert_eq!(last_history(&p)["outcome"], "interrupted");
}

#[test]
fn signal_while_the_new_slot_starts_stops_it() {
    let p = Project::live_v1("");
    let slow = p.commit("v2", "export APP_READY_DELAY_MS=60000");
    let log = p.path().join("zdd.log");
    let mut z = p.spawn_zdd_logged(&["deploy", &slow], &log);
    // `started_at` is recorded with the app's process (not the build's).
    assert!(wait_until(Duration::from_secs(20), || p.state()["slots"]
        ["b"]
        .get("started_at")
        .is_some()));
    signal(&z, nix::sys::signal::Signal::SIGINT);
    let status = z.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(128 + 2), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT; stopped slot b"),
        "{stderr}"
    );
    assert_eq!(p.served(), "v1");
    assert_eq!(
        p.app_pids().len(),
        1,
        "only slot a runs: {:?}",
        p.app_pids()
    );
    assert!(p.state()["slots"]["b"].get("process").is_none());
}

#[test]
fn signal_during_the_swap_finishes_it() {
    let p = Project::new("");
    let mut p = p;
    p.start_nginx();
    p.edit_config(|c| c.replace("[stop]\ntimeout = \"10s\"", "[stop]\ntimeout = \"3s\""));
    // v1 ignores SIGTERM, so the swap's drain lasts the whole stop timeout.
    let v1 = p.commit("v1", "export APP_IGNORE_TERM=1");
    assert_eq!(p.zdd(&["deploy", &v1]).code, 0);
    let v2 = p.commit("v2", "");
    let log = p.path().join("zdd.log");
    let mut z = p.spawn_zdd_logged(&["deploy", &v2], &log);
    wait_for_log(&log, "nginx routes to slot b");
    std::thread::sleep(Duration::from_millis(200));
    signal(&z, nix::sys::signal::Signal::SIGHUP);
    let status = z.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("got SIGHUP during the swap; finished it first"),
        "{stderr}"
    );
    assert!(stderr.contains("killed its process group"), "{stderr}");
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["b"]);
    assert_eq!(p.state()["active"].as_str(), Some("b"));
}

#[test]
fn cron_does_not_undo_a_rollback_until_the_branch_moves() {
    let p = Project::live_v1("");
    p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.served(), "v2");
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
    // The tip is still v2, which the operator just rolled back from.
    let r = p.zdd(&["deploy"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    assert_eq!(p.served(), "v1");
    let r = p.zdd(&["-v", "deploy"]);
    assert!(r.stderr.contains("was rolled back at"), "{r:?}");
    // Once the branch moves, cron deploys again.
    p.commit("v3", "");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v3");
}

#[test]
fn probe_reaching_another_server_block_stops_the_swap_and_cron_retries_later() {
    let _heavy = heavy();
    let mut p = Project::new("");
    let site = p.zdd(&["nginx"]).stdout;
    // Another site is nginx's default server on the same port and answers
    // zdd's probe (server_name "_" sends no Host of ours).
    let other = format!(
        "server {{ listen 127.0.0.1:{} default_server; server_name other.test; location / {{ return 404; }} }}\n",
        p.nginx_port
    );
    p.start_nginx_with(&format!("{site}{other}"));
    // A first deploy nginx answers but routes elsewhere is no success.
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("without zdd's probe headers"), "{r:?}");
    assert!(p.listening_slots().is_empty(), "its slot was stopped");
    // Pointed at the app's server block, the same commit goes live.
    p.start_nginx_with(&site);
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.served(), "v1");
    p.start_nginx_with(&format!("{site}{other}"));
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("reached another server block"), "{r:?}");
    assert_eq!(p.listening_slots(), ["a"], "the old slot keeps serving");
    assert_eq!(p.served_direct(0), "v1");
    let h = p.zdd(&["history", "--json"]);
    assert!(h.stdout.contains("\"outcome\": \"error\""), "{h:?}");

    // Fixed nginx: the next cron run tries the same commit again.
    p.start_nginx_with(&site);
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&v2[..12]), "{r:?}");
    assert_eq!(p.served(), "v2");
}

/// A newcomer's first deploys: a `start` that cannot run is not the
/// commit's failure, and a fix in zdd.toml is a new attempt, so cron tries
/// the same tip again instead of waiting for the branch to move.
#[test]
fn a_start_that_cannot_run_or_a_changed_config_is_tried_again_by_cron() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.start_nginx();
    p.edit_config(|c| c.replace("start = \"./run.sh\"", "start = \"./no-such-server\""));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(
            "the start command cannot run (exit status 127: not found; see the slot's log)"
        ),
        "{r:?}"
    );
    assert_eq!(p.history().last().unwrap()["outcome"], "error");
    p.edit_config(|c| c.replace("start = \"./no-such-server\"", "start = \"./run.sh\""));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "cron tries the tip again: {r:?}");
    assert_eq!(p.served(), "v1");

    // The commit's own failure blocks it for cron, until zdd.toml changes.
    p.commit("v2", "export APP_STATUS=${V2_STATUS:-500}");
    p.edit_config(|c| c.replace("timeout = \"15s\"", "timeout = \"1s\""));
    assert_eq!(p.zdd(&["deploy"]).code, 1);
    assert_eq!(p.history().last().unwrap()["outcome"], "failed");
    let r = p.zdd(&["deploy"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "left alone: {r:?}");
    p.edit_config(|c| c.replace("[env]\n", "[env]\nV2_STATUS = \"200\"\n"));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "a new attempt under the new config: {r:?}");
    assert_eq!(p.served(), "v2");
}
