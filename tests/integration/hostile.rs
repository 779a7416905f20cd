//! What the app's user can do, tried as an attacker who has the app's
//! shell would: nothing it does acts as root. Each test holds one of the
//! guarantees the README lists under "Running as root, the app as a user".

use crate::support::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    text[text.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// (session, tty_nr) of `pid`.
fn session_and_tty(pid: i32) -> (i32, i32) {
    let f = stat_fields(pid);
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

fn zdd_cmd(p: &Project, args: &[&str]) -> Command {
    let mut cmd = Command::new(zdd_bin());
    cmd.arg("--config")
        .arg(p.config_path())
        .args(args)
        .current_dir(p.path());
    cmd
}

/// Every file below `dir` with its content.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            all.push((path.display().to_string(), String::new()));
            all.extend(snapshot(&path));
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            all.push((path.display().to_string(), text));
        }
    }
    all.sort();
    all
}

/// A folder of root's, mode 0755, with files in it: what an attack aims at.
fn precious() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("deep")).unwrap();
    std::fs::write(dir.path().join("deep/data"), "root's data\n").unwrap();
    std::fs::write(dir.path().join("top"), "root's too\n").unwrap();
    dir
}

fn require_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("NOT RUN: {what} needs root");
    }
    is_root()
}

#[test]
fn the_app_and_its_build_have_no_terminal_and_a_session_of_their_own() {
    // zdd run from an operator's shell on a terminal (a pseudo-terminal
    // here) that outlives the deploy: TIOCSTI needs the app to have that
    // terminal as its controlling terminal, and it has none.
    let mut p = Project::new("");
    p.start_nginx();
    let marker = p.path().join("build-tty");
    p.commit_with(
        "v1t",
        "",
        &format!(
            "if (: </dev/tty) 2>/dev/null; then echo has-a-tty > {0}; else echo no-tty > {0}; fi\n",
            marker.display()
        ),
    );
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors.
    let rc = unsafe {
        nix::libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    let script = format!(
        "{} --config {} deploy; echo deployed-$?; exec sleep 30",
        zdd_bin().display(),
        p.config_path().display()
    );
    let mut shell = Command::new("/bin/sh");
    shell.arg("-c").arg(&script).current_dir(p.path());
    // SAFETY: in the child: setsid, TIOCSCTTY and dup2 are system calls.
    unsafe {
        shell.pre_exec(move || {
            nix::libc::setsid();
            for fd in 0..3 {
                nix::libc::dup2(slave, fd);
            }
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut shell = shell
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SAFETY: the parent's copy of the slave end is not needed.
    unsafe { nix::libc::close(slave) };
    // Read the terminal (so that nothing written to it blocks) until the
    // shell says the deploy ended.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let heard = std::sync::Arc::clone(&said);
    std::thread::spawn(move || {
        use std::io::Read;
        // SAFETY: `master` is ours alone from here on.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master) };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = f.read(&mut buf) {
            heard
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let ended = || said.lock().unwrap().contains("deployed-");
    assert!(
        wait_until(Duration::from_secs(60), ended),
        "{}",
        said.lock().unwrap()
    );
    assert!(
        said.lock().unwrap().contains("deployed-0"),
        "{}",
        said.lock().unwrap()
    );
    let shell_session = session_and_tty(shell.id() as i32);
    assert_ne!(shell_session.1, 0, "the operator's shell has the terminal");
    let keeper = p.keeper_pids()[0];
    for pid in [keeper, p.app_pids()[0]] {
        let (session, tty) = session_and_tty(pid);
        assert_eq!(tty, 0, "pid {pid} has no controlling terminal");
        assert_eq!(session, keeper, "pid {pid} is in the keeper's own session");
        assert_ne!(session, shell_session.0);
    }
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "no-tty",
        "the build could not open /dev/tty"
    );
    assert!(
        shell.try_wait().unwrap().is_none(),
        "the shell outlived the deploy"
    );
    kill(shell.id() as i32, nix::sys::signal::Signal::SIGKILL);
    shell.wait().unwrap();
    // The terminal hung up: the app, in a session of its own, serves on.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(p.served(), "v1t");
}

#[test]
fn the_app_inherits_no_descriptor_and_holds_no_lock_of_the_caller() {
    // `zdd deploy 7</etc/shadow` and `(flock 9; zdd deploy) 9>wrapper.lock`.
    let p = Project::new("");
    let secret = p.path().join("secret");
    std::fs::write(&secret, "root's secret\n").unwrap();
    let wrapper_lock = p.path().join("wrapper.lock");
    let lock = std::fs::File::create(&wrapper_lock).unwrap();
    let secret_file = std::fs::File::open(&secret).unwrap();
    let flock = |fd: i32, op: i32| unsafe { nix::libc::flock(fd, op) };
    assert_eq!(flock(lock.as_raw_fd(), nix::libc::LOCK_EX), 0);
    let (lock_fd, secret_fd) = (lock.as_raw_fd(), secret_file.as_raw_fd());
    let mut cmd = zdd_cmd(&p, &["deploy"]);
    // SAFETY: dup2 in the child; it clears close-on-exec on 7 and 9.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(secret_fd, 7) < 0 || nix::libc::dup2(lock_fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(r.code, 0, "{r:?}");
    drop(lock);
    drop(secret_file);
    let pids = p.zdd_pids();
    assert_eq!(pids.len(), 2, "a keeper and its app: {pids:?}");
    for pid in pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(
                target != secret && target != wrapper_lock,
                "pid {pid} holds {} as fd {:?}",
                target.display(),
                fd.file_name()
            );
        }
    }
    // The wrapper's lock is free once zdd is gone.
    let again = std::fs::File::open(&wrapper_lock).unwrap();
    assert_eq!(
        flock(again.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB),
        0,
        "nothing zdd started holds the wrapper's lock"
    );
}

/// A `git` first on zdd's PATH that logs who runs it with what, and, the
/// moment the work tree's `git clean` starts, does what the attack did: a
/// folder in the tree becomes a symlink to `target`, and something that
/// follows symlinks deletes through it.
fn hostile_git(p: &Project, target: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = p.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = p.path().join("git.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script = format!(
        r#"#!/bin/sh
echo "$(id -u) $*" >> {log}
tree=""
prev=""
for a in "$@"; do
  [ "$prev" = "--work-tree" ] && tree="$a"
  prev="$a"
done
case " $* " in
  *" read-tree "*)
    mkdir -p "$tree/junk/sub" && echo x > "$tree/junk/sub/f"
    rm -rf "$tree/junk" && ln -s {target} "$tree/junk"
    rm -rf "$tree"/junk/* 2>/dev/null
    ;;
esac
exec {real} "$@"
"#,
        log = log.display(),
        target = target.display(),
        real = real.trim()
    );
    let git = bin.join("git");
    std::fs::write(&git, script).unwrap();
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

#[test]
fn a_folder_swapped_for_a_symlink_while_zdd_checks_out_changes_nothing_outside() {
    if !require_root("running the app as another user") {
        return;
    }
    let mut p = Project::new("user = \"nobody\"");
    p.start_nginx();
    let target = precious();
    let before = snapshot(target.path());
    let (bin, log) = hostile_git(&p, target.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    for _ in 0..2 {
        let r = p.zdd_env(&["deploy"], &[("PATH", &path)]);
        assert_eq!(r.code, 0, "{r:?}");
        p.commit(&format!("v{}", p.history().len() + 1), "");
    }
    assert_eq!(
        snapshot(target.path()),
        before,
        "nothing outside the tree changed"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let in_tree: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains("--work-tree"))
        .collect();
    assert!(in_tree.iter().any(|l| l.contains(" read-tree ")), "{calls}");
    for line in &in_tree {
        assert!(line.starts_with("65534 "), "as the app's user: {line}");
    }
    for line in calls.lines().filter(|l| l.starts_with("0 ")) {
        assert!(
            !line.contains("--work-tree"),
            "root's git stays in the repository: {line}"
        );
    }
    // The checkout is the commit's (what the user planted in its own
    // release stays its own).
    let live = p.state()["slots"]["b"]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(p.root().join(format!("releases/{live}/VERSION"))).unwrap(),
        "v2\n"
    );
}

#[test]
fn a_work_tree_of_another_owner_is_removed_without_following_its_symlinks() {
    if !require_root("running the app as another user") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let p = Project::live_v1("user = \"nobody\"");
    let target = precious();
    let before = snapshot(target.path());
    let v2 = p.commit("v2", "");
    // v2's release folder as an earlier attempt under another `user` left
    // it: someone else's, with a symlink to root's folder and a folder in it.
    let b = p.root().join(format!("releases/{v2}"));
    std::fs::create_dir_all(b.join("cache/deep")).unwrap();
    std::os::unix::fs::symlink(target.path(), b.join("cache/link")).unwrap();
    std::os::unix::fs::symlink(target.path(), b.join("link")).unwrap();
    std::fs::write(b.join("cache/deep/f"), "x").unwrap();
    let chown = Command::new("chown")
        .args(["-R", "-h", "4242:4242"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(chown.success());
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        snapshot(target.path()),
        before,
        "nothing outside the tree changed"
    );
    assert_eq!(std::fs::metadata(&b).unwrap().uid(), 65534);
    assert!(!b.join("link").exists() && !b.join("cache").exists());
    assert_eq!(p.served(), "v2");
}

#[test]
fn a_process_with_forged_marks_on_the_idle_port_is_named_and_left_alone() {
    let p = Project::live_v1("");
    // It claims to be slot b of this root, as zdd's own apps are marked.
    let mut forger = Command::new(example("app"))
        .env("PORT", p.ports[1].to_string())
        .env("APP_VERSION", "forged")
        .env("ZDD_ROOT", p.root())
        .env("ZDD_SLOT", "b")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || listening(
        p.ports[1]
    )));
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    let named = format!(
        "port {} of slot b is taken by pid {} (user root: ",
        p.ports[1],
        forger.id()
    );
    assert!(r.stderr.contains(&named), "{r:?}");
    assert!(r.stderr.contains("which proves nothing"), "{r:?}");
    assert!(forger.try_wait().unwrap().is_none(), "never signalled");
    let s = p.zdd(&["status"]);
    assert!(
        s.stdout
            .contains(&format!("held by pid {} (user root: ", forger.id())),
        "{s:?}"
    );
    // Nor by a stop of the slot it claims.
    let r = p.zdd(&["stop", "b"]);
    assert!(r.stdout.contains("slot b was not running"), "{r:?}");
    assert!(forger.try_wait().unwrap().is_none(), "never signalled");
    forger.kill().unwrap();
    forger.wait().unwrap();
    assert_eq!(p.served(), "v1");
}

/// An app whose `run.sh` first starts a helper that leaves the group and
/// the session (`setsid`) and holds a listening socket on `port`.
fn app_with_an_escaped_helper(p: &Project, port: u16) -> String {
    p.commit(
        "v1h",
        &format!(
            "python3 -c 'import os, socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind((\"127.0.0.1\", {port}))\ns.listen()\nos.setsid()\ntime.sleep(300)' &"
        ),
    )
}

/// Is `pid` in a cgroup of zdd's (`CGROUP2/zdd/...`)?
fn in_zdd_cgroup(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("0::/zdd/"))
}

fn escaped_helper_is_stopped_with_its_slot(env: &[(&str, &str)]) {
    let p = Project::new("");
    let helper_port = free_port();
    let sha = app_with_an_escaped_helper(&p, helper_port);
    let r = p.zdd_env(&["deploy", &sha], env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(wait_until(Duration::from_secs(10), || listening(
        helper_port
    )));
    let helper = zdd::ports::listeners(helper_port, &[])[0]
        .pid
        .expect("the helper listens");
    let (session, _) = session_and_tty(helper);
    assert_eq!(session, helper, "the helper left the app's session");
    let fenced =
        is_root() && cgroup_offered() && !env.iter().any(|(k, _)| *k == "ZDD_TEST_NO_CGROUP");
    for pid in [helper, p.app_pids()[0]] {
        assert_eq!(in_zdd_cgroup(pid), fenced, "pid {pid} in the app's cgroup");
    }
    let r = p.zdd_env(&["stop", "a"], env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(
            "its app had left 1 process(es) outside its process group, stopped with it: pid"
        ) && r.stdout.contains("python3"),
        "{r:?}"
    );
    assert!(r.stdout.contains("stopped slot a"), "{r:?}");
    assert!(!listening(helper_port), "nothing of the app holds a socket");
    assert!(
        p.zdd_pids().is_empty(),
        "nothing of it remains: {:?}",
        p.zdd_pids()
    );
}

#[test]
fn an_escaped_descendant_is_stopped_with_its_slot_in_a_cgroup() {
    escaped_helper_is_stopped_with_its_slot(&[]);
}

#[test]
fn an_escaped_descendant_is_stopped_with_its_slot_in_a_cgroup_joined_after_the_fork() {
    // Kernels before 5.7 have no clone3 into a cgroup: the app joins it.
    escaped_helper_is_stopped_with_its_slot(&[("ZDD_TEST_NO_CLONE3", "1")]);
}

#[test]
fn an_escaped_descendant_is_stopped_with_its_slot_by_its_keeper_alone() {
    // Where the system offers no cgroup: the keeper as subreaper.
    escaped_helper_is_stopped_with_its_slot(&[("ZDD_TEST_NO_CGROUP", "1")]);
}

#[test]
fn what_a_killed_keeper_left_in_its_cgroup_is_named_and_stopped_by_the_next_run() {
    if !require_root("a cgroup of zdd's") || !cgroup_offered() {
        return;
    }
    let p = Project::new("");
    let helper_port = free_port();
    let sha = app_with_an_escaped_helper(&p, helper_port);
    assert_eq!(p.zdd(&["deploy", &sha]).code, 0);
    assert!(wait_until(Duration::from_secs(10), || listening(
        helper_port
    )));
    // The keeper dies; its app goes down with it; the helper does not.
    for pid in p.keeper_pids() {
        kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(10), || !listening(
        p.ports[0]
    )));
    assert!(listening(helper_port));
    let s = p.zdd(&["status"]);
    assert!(
        s.stdout
            .contains("1 process(es) of a stopped app still run in its cgroup"),
        "{s:?}"
    );
    let r = p.zdd(&["up"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("of an earlier app still run in its cgroup")
            && r.stderr.contains("stopping them"),
        "{r:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || listening(helper_port)),
        "the new helper"
    );
    assert_eq!(p.served_direct(0), "v1h");
}

/// Does this machine give zdd a cgroup v2 with `cgroup.kill`? Asked the
/// way zdd asks: by making one.
fn cgroup_offered() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let made = zdd::process::fence::app_cgroup(probe.path(), "probe");
    if let Some(cgroup) = &made {
        zdd::process::fence::remove_cgroup(cgroup);
    } else {
        eprintln!("NOT RUN: no cgroup v2 for zdd here");
    }
    made.is_some()
}

#[test]
fn a_config_or_template_others_could_write_steers_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new("");
    let chmod = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&p.config_path(), 0o666);
    let r = p.zdd(&["nginx"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "config file {} is writable by group or others (mode 0666)",
            p.config_path().display()
        )) && r.stderr.contains("chmod go-w"),
        "{r:?}"
    );
    chmod(&p.config_path(), 0o644);
    if is_root() {
        let chown = Command::new("chown")
            .arg("nobody")
            .arg(p.config_path())
            .status()
            .unwrap();
        assert!(chown.success());
        let r = p.zdd(&["status"]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains("belongs to uid 65534, not to root"),
            "{r:?}"
        );
        let chown = Command::new("chown")
            .arg("root")
            .arg(p.config_path())
            .status()
            .unwrap();
        assert!(chown.success());
    }
    // A custom template, and the folder it is in.
    let dir = p.path().join("templates");
    std::fs::create_dir(&dir).unwrap();
    let template = dir.join("site.conf.j2");
    std::fs::write(&template, "# {{ name }}\n").unwrap();
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            &format!("[nginx]\ntemplate = {:?}\n", template.display().to_string()),
        )
    });
    assert_eq!(p.zdd(&["nginx"]).stdout, "# testapp\n");
    chmod(&dir, 0o777);
    let r = p.zdd(&["nginx"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("the folder {} on its way", dir.display())),
        "{r:?}"
    );
    assert!(!r.stdout.contains("testapp"), "{r:?}");
}

#[test]
fn control_characters_from_the_app_never_reach_the_terminal() {
    let p = Project::live_v1("");
    // A listener on the idle port whose argv forges a line and a title.
    let forged = "x\n\u{1b}[32mstate matches the running processes\u{1b}[0m\r\u{1b}]0;owned\u{7}";
    let mut forger = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {}))\ns.listen()\ntime.sleep(60)",
                p.ports[1]
            ),
            forged,
        ])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || listening(
        p.ports[1]
    )));
    for r in [p.zdd(&["status"]), p.zdd(&["deploy", &p.commit("v2", "")])] {
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(!all.contains('\u{1b}') && !all.contains('\r'), "{r:?}");
        assert!(all.contains("\\x1b[32mstate matches"), "{r:?}");
        assert!(
            !all.lines().any(|l| l.starts_with("\u{1b}")
                || l.starts_with("state matches the running processes\\")),
            "{r:?}"
        );
    }
    forger.kill().unwrap();
    forger.wait().unwrap();
    // The app's own output, quoted when its deploy fails.
    let loud = p.commit("v3", "printf 'boom\\033]0;owned\\007\\r\\n'; exit 7");
    let r = p.zdd(&["deploy", &loud]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("boom\\x1b]0;owned\\x07"), "{r:?}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
}

#[test]
fn a_keeper_whose_root_is_gone_gives_up_after_one_line() {
    let p = Project::live_v1("");
    let keeper = p.keeper_pids()[0];
    // The root is moved away (as deleted); the app then dies.
    let aside = p.path().join("state-aside");
    std::fs::rename(p.root(), &aside).unwrap();
    for pid in p.app_pids() {
        kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{keeper}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{keeper}/stat"))
                .is_ok_and(|s| s.contains(") Z"))),
        "the keeper ended"
    );
    let text = std::fs::read_to_string(aside.join("logs/a.log")).unwrap();
    assert!(
        text.contains("its root") && text.contains("is gone; not starting the app again"),
        "{text}"
    );
    assert!(!listening(p.ports[0]));
}

#[test]
fn a_keeper_that_zdd_no_longer_records_gives_up_instead_of_restarting() {
    let p = Project::live_v1("");
    let keeper = p.keeper_pids()[0];
    // A first crash: restarted, and the keeper has seen its record.
    for pid in p.app_pids() {
        kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(10), || p.served_direct(0) == "v1"));
    // The state is replaced behind its back: slot a records no process.
    let mut state: toml::Table =
        toml::from_str(&String::from_utf8(p.state_bytes()).unwrap()).unwrap();
    state["slots"]["a"]
        .as_table_mut()
        .unwrap()
        .remove("process");
    std::fs::write(
        p.root().join("state.toml"),
        toml::to_string(&state).unwrap(),
    )
    .unwrap();
    for pid in p.app_pids() {
        kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(10), || !p
            .keeper_pids()
            .contains(&keeper)),
        "the keeper ended"
    );
    let text = std::fs::read_to_string(p.root().join("logs/a.log")).unwrap();
    assert!(
        text.contains(&format!("does not name this keeper (pid {keeper})"))
            && text.contains("not starting the app again"),
        "{text}"
    );
    assert!(!listening(p.ports[0]));
}
