//! What a newcomer reads when something is off (issue 21, items 5–13):
//! each message and exit code pinned as the user sees it, from the real
//! binary.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A `zdd` command line of the project, as a plain `Command`.
fn zdd_cmd(p: &Project, args: &[&str]) -> Command {
    let mut cmd = Command::new(zdd_bin());
    cmd.arg("--config").arg(p.config_path()).args(args);
    cmd.current_dir(p.path());
    cmd
}

#[test]
fn reload_with_nginx_stopped_says_it_is_not_running_and_how_to_start_it() {
    let p = Project::new("");
    // What `nginx -t` leaves behind while nginx is stopped: an empty file.
    std::fs::create_dir_all(p.path().join("nginx")).unwrap();
    std::fs::write(p.path().join("nginx/nginx.pid"), "").unwrap();
    p.edit_config(|c| {
        c.replace("[nginx]\n", "[nginx]\noutput = \"nginx/site.conf\"\n")
            .replace("test_command = \"", "test_command = \"true || ")
    });
    let r = p.zdd(&["nginx", "--write", "--reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    let pid_file = p.path().join("nginx/nginx.pid");
    assert!(
        r.stderr.contains(&format!(
            "zdd: nginx is not running: its pid file {} is empty (`nginx -t` leaves it so while nginx is stopped); start nginx (",
            pid_file.display()
        )) && r.stderr.contains("): it reads its config as it is now, which passed nginx.test_command"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("does not hold a pid"), "{r:?}");
    assert!(
        p.path().join("nginx/site.conf").exists(),
        "the site is written"
    );

    // No pid file at all: the same, and how to find the right one.
    std::fs::remove_file(p.path().join("nginx/nginx.pid")).unwrap();
    let r = p.zdd(&["nginx", "--reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("zdd: nginx does not seem to run, or nginx.pid_file is not its pid file: ")
            && r.stderr.contains(
                "nginx.pid (nginx.pid_file) is not there; if nginx runs with its own nginx.conf"
            ),
        "{r:?}"
    );
}

#[test]
fn a_deploy_and_status_with_nginx_down_name_nginx_and_quote_no_app_log() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nroute_timeout = \"1s\"\n"));
    assert_eq!(p.zdd(&["status"]).code, 0, "serving");
    p.nginx = None; // stopped
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("before slot b was started, nginx did not show its switch routing to the live slot a: nginx did not answer at ")
            && r.stderr.contains("nothing answers on nginx.listen"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("; slot a still runs ")
            && r.stderr
                .contains(", but nothing reaches it while nginx does not answer"),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains("last lines of"),
        "the app's log has nothing to do with nginx: {r:?}"
    );

    let s = p.zdd(&["status"]);
    assert_eq!(s.code, 5, "{s:?}");
    let nginx_line = s.stdout.lines().find(|l| l.starts_with("nginx: ")).unwrap();
    assert!(
        nginx_line.starts_with("nginx: switch mode, the switch points at slot a, but nginx does not answer at http://127.0.0.1:")
            && nginx_line.contains("so nothing reaches the app: is nginx running"),
        "{s:?}"
    );
    assert!(
        s.stdout.contains(
            "NOT SERVING: nginx does not send requests to the live slot (the nginx line says why)"
        ),
        "{s:?}"
    );
    assert!(
        s.stderr
            .starts_with("zdd: not serving: nginx does not answer at ")
            && s.stderr
                .trim_end()
                .ends_with("with the config from `zdd nginx`?"),
        "the whole reason: {s:?}"
    );
    let json = p.zdd(&["status", "--json"]);
    assert_eq!(json.code, 5, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["serving"], false);
    assert_eq!(v["nginx"]["answered"], false);

    // A failure of the app itself still quotes what it wrote, and only
    // what this attempt wrote.
    p.start_nginx();
    let broken = p.commit("v3", "echo v3 fails to boot; exit 3");
    let r = p.zdd(&["deploy", &broken]);
    assert_eq!(r.code, 1, "{r:?}");
    let tail = r.stderr.split("last lines of").nth(1).unwrap_or_default();
    assert!(tail.contains("v3 fails to boot"), "{r:?}");
    assert!(
        tail.contains(&format!("building {broken}")) && !tail.contains(&format!("building {v2}")),
        "this attempt's lines only, not the v2 attempt's: {r:?}"
    );
}

#[test]
fn status_lists_zdd_start_processes_and_exits_5_when_the_site_is_down() {
    let _heavy = heavy();
    let mut p = Project::new("");
    let s = p.zdd(&["status"]);
    assert_eq!(s.code, 5, "nothing deployed yet: {s:?}");
    assert!(
        s.stdout
            .contains("NOT SERVING: nothing is deployed yet; `zdd deploy` deploys the tip"),
        "{s:?}"
    );
    p.go_live();
    let worker = free_port();
    let r = p.start_named("worker", worker);
    assert_eq!(r.code, 0, "{r:?}");
    let s = p.zdd(&["status"]);
    assert_eq!(s.code, 0, "{s:?}");
    let line = s
        .stdout
        .lines()
        .find(|l| l.starts_with("  process worker"))
        .unwrap_or_else(|| panic!("no worker line: {s:?}"));
    assert!(
        line.starts_with(&format!("  process worker  port {worker}  pid "))
            && line.contains("healthy ("),
        "{s:?}"
    );
    let v = p.status_json();
    assert_eq!(v["serving"], true);
    assert_eq!(v["processes"][0]["name"], "worker");
    assert_eq!(v["processes"][0]["port"], worker);
    assert_eq!(v["processes"][0]["running"], true);
    assert_eq!(v["nginx"]["routes_to"], "a");

    // The live app's keeper killed: not serving, and what brings it back.
    let keeper = p.state()["slots"]["a"]["process"]["pid"]
        .as_integer()
        .unwrap();
    kill(keeper as i32, nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || !listening(
        p.ports[0]
    )));
    let s = p.zdd(&["status"]);
    assert_eq!(s.code, 5, "{s:?}");
    assert!(
        s.stdout.contains("NOT SERVING: slot a, the live slot, does not run; `zdd up` starts it again (so does the next `zdd deploy`)"),
        "{s:?}"
    );
    assert_eq!(p.zdd(&["up"]).code, 0);
    assert_eq!(p.zdd(&["status"]).code, 0);
    p.kill_everything();
}

#[test]
fn a_repo_that_is_not_there_is_bad_config() {
    let p = Project::new("");
    p.edit_config(|c| c.replace("repo = \"repo\"", "repo = \"no-such-repo\""));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 2, "{r:?}");
    let repo = std::path::absolute(p.path().join("no-such-repo")).unwrap();
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "zdd: repo {} (in {}) does not exist: set `repo` to the app's git repository, a path or a URL",
            repo.display(),
            p.config_path().display()
        )
    );
    // A folder that is not a git repository: git's message, read as one.
    std::fs::create_dir_all(p.path().join("no-such-repo")).unwrap();
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("does not appear to be a git repository; fatal: Could not read from remote repository. Please make sure you have the correct access rights and the repository exists.; set `repo` in "),
        "{r:?}"
    );
}

#[test]
fn a_user_who_may_not_read_the_state_gets_exit_2_and_who_may() {
    // Not as another user, it cannot be shown: fail rather than pass.
    assert!(
        is_root(),
        "this test runs zdd as nobody: run the suite as root (scripts/test.sh in CI does)"
    );
    let mut p = Project::new("");
    p.go_live();
    use std::os::unix::fs::PermissionsExt;
    for dir in [p.path().to_path_buf(), p.root()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(p.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(zdd_bin())
        .arg("--config")
        .arg(p.config_path())
        .arg("status");
    let r = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(r.code, 2, "{r:?}");
    let state = std::fs::canonicalize(p.root()).unwrap().join("state.toml");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "zdd: cannot open {}: it is root's (mode 0600), and zdd runs as nobody, who cannot read it; run zdd as root (sudo zdd …)",
            state.display()
        )
    );
    p.kill_everything();
}

#[test]
fn init_creates_its_folder_and_c_takes_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/zdd/shop/zdd.toml");
    let r = run_bounded(
        {
            let mut c = Command::new(zdd_bin());
            c.arg("-c").arg(&config).arg("init");
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(config.is_file(), "{r:?}");
    let c = config.display();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [
            format!("wrote {c}; edit it (name, repo, start, ports, nginx), then:").as_str(),
            format!("  1. nginx: `zdd -c {c} nginx --write --reload` (or include the output of `zdd -c {c} nginx` in your site)").as_str(),
            format!("  2. first deploy: `zdd -c {c} deploy`, then `zdd -c {c} status`").as_str(),
        ],
        "{r:?}"
    );
    assert!(
        lines[3].ends_with(&format!("zdd -c {c} deploy --wait=2m"))
            && lines[4].ends_with(&format!("zdd -c {c} up --wait=5m")),
        "{r:?}"
    );
    assert!(!r.stdout.contains("target/"), "no build path: {r:?}");

    // -c with the folder: its zdd.toml, for init and for every command.
    let folder = config.parent().unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(zdd_bin());
        c.arg("-c").arg(folder).args(args);
        run_bounded(c, Duration::from_secs(30))
    };
    let r = run(&["init"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr.trim_end(),
        format!("zdd: {c} already exists; zdd init never overwrites it")
    );
    let r = run(&["nginx", "--part", "upstreams"]);
    assert_eq!(r.code, 0, "the starter from the folder: {r:?}");
    assert!(r.stdout.contains("upstream myapp {"), "{r:?}");
}

#[test]
fn an_app_listening_elsewhere_is_named_with_the_port_it_should_use() {
    let p = Project::new("");
    let elsewhere = free_port();
    p.commit("v1-elsewhere", &format!("export PORT={elsewhere}"));
    p.edit_config(|c| c.replace("timeout = \"15s\"", "timeout = \"3s\""));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    // Said while zdd still waits (after 2 s), not only at the end.
    assert!(
        r.stderr.contains(&format!(
            "the app listens on 127.0.0.1:{elsewhere}, not on 127.0.0.1:$PORT ({}): make `start` listen on 127.0.0.1 and the port zdd sets in $PORT; still waiting for its health check (at most health.timeout, 3s)",
            p.ports[0]
        )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "failed: the app listens on 127.0.0.1:{elsewhere}, not on 127.0.0.1:$PORT ({}): make `start` listen on 127.0.0.1 and the port zdd sets in $PORT; not healthy after 3s",
            p.ports[0]
        )),
        "{r:?}"
    );
    assert!(!listening(elsewhere), "the failed app was stopped");
}

#[test]
fn a_start_of_several_steps_is_refused_when_the_config_loads() {
    let p = Project::new("");
    p.edit_config(|c| {
        c.replace(
            "start = \"./run.sh\"",
            "start = \". venv/bin/activate && gunicorn app:app\"",
        )
    });
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "zdd: {}:5:9: `start` begins with the shell builtin `.`, which cannot be exec'd; zdd runs it as `sh -c \"exec START\"`, so the app replaces the shell and gets zdd's signals; put the steps in a script and start that (ending in `exec …`), or run the program directly (a venv's `venv/bin/gunicorn …` needs no `activate`)",
            p.config_path().display()
        )
    );
    assert!(!p.root().exists(), "nothing was created");
}

#[test]
fn stopping_the_live_slot_says_the_site_is_down_and_what_brings_it_back() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.go_live();
    let r = p.zdd(&["stop", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("stopped slot a (pid "), "{r:?}");
    assert_eq!(
        r.stderr.trim_end(),
        "zdd: warning: slot a is the live slot: the site is down (nginx has no app to send it to) until `zdd up` starts slot a again, or the next `zdd deploy` does"
    );
    assert_eq!(p.zdd(&["up"]).code, 0);
    assert_eq!(p.served(), "v1");
    // The idle slot: no warning.
    let r = p.zdd(&["stop", "b"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    p.kill_everything();
}

#[test]
fn small_things_a_newcomer_met() {
    // `zdd man | head`: the reader stops early; zdd ends quietly.
    for args in [&["man"][..], &["completions", "bash"]] {
        let mut child = Command::new(zdd_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // closed before zdd writes
        let out = wait_output(&mut child, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }

    // `--wait 2m` read as a COMMIT: the unknown commit says what was meant.
    let p = Project::new("");
    let r = run_bounded(
        zdd_cmd(&p, &["deploy", "--wait", "2m"]),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.trim_end().ends_with(
            "unknown commit \"2m\": not a sha, tag or branch in REPO; to wait at most 2m for the lock, write --wait=2m (with the =)"
                .replace("REPO", &p.repo().display().to_string())
                .as_str()
        ),
        "{r:?}"
    );
    // `zdd deploy HEAD`: what zdd's copy of the repository has instead.
    let r = run_bounded(zdd_cmd(&p, &["deploy", "HEAD"]), Duration::from_secs(60));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("no HEAD: `zdd deploy` alone deploys the tip of main"),
        "{r:?}"
    );

    // Plain `zdd nginx` with only the parts configured prints the parts.
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            "[nginx]\nupstreams_output = \"nginx/up.conf\"\nsnippet_output = \"nginx/snippet.conf\"\n",
        )
    });
    let r = p.zdd(&["nginx"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("server {"), "no server block: {r:?}");
    let up = r
        .stdout
        .find("# ---- zdd nginx --part upstreams (nginx.upstreams_output = ");
    let snippet = r
        .stdout
        .find("# ---- zdd nginx --part snippet (nginx.snippet_output = ");
    assert!(up.is_some() && snippet > up, "{r:?}");
    assert!(r.stdout.contains("upstream testapp {"), "{r:?}");
}
