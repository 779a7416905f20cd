//! Shared helpers for the integration tests: a private nginx on a free
//! loopback port, a throw-away git repo of the reference app, the zdd
//! binary run with a timeout, and plain HTTP probes.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Tests that run nginx under load take this so they do not starve each other.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn zdd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zdd"))
}

/// A built example binary (`app`, `load`), built on first use if missing.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = zdd_bin().parent().unwrap().join("examples");
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "--examples", "--quiet"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build --examples")
                .success();
            assert!(ok, "cargo build --examples failed");
        });
    }
    assert!(
        path.exists(),
        "{} is missing; run `cargo build --examples`",
        path.display()
    );
    path
}

/// Where `scripts/test.sh` installed the real app servers (a venv with
/// gunicorn and uvicorn, node_modules with express), or a loud failure.
pub fn app_servers() -> PathBuf {
    let dir = std::env::var_os("ZDD_APP_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/app-servers"));
    assert!(
        dir.join("venv/bin/gunicorn").exists() && dir.join("node_modules/express").exists(),
        "the real app servers are not installed in {}: run scripts/test.sh, which installs \
         gunicorn, Flask, uvicorn and Starlette (PyPI) and express (npm) there",
        dir.display()
    );
    dir
}

/// A loopback port nobody listens on, never handed out twice in this run.
///
/// Ports come from 20000-32767, below the kernel's ephemeral range (where
/// the outgoing connections of the load, and ports asked with bind(:0),
/// come from), so that a port given to one test cannot be given to another
/// test running beside it before the first one binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + ((std::process::id() as u64 * 7919) % 12000) as u32,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..12768 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (20000 + (n - 20000) % 12768) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && !listening(port) {
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767");
}

pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// Poll `cond` until it holds or `limit` passes.
/// The file of the newest deploy attempt in `ROOT/logs/deploys/`, if any.
pub fn last_attempt_log(p: &Project) -> Option<String> {
    let dir = p.root().join("logs/deploys");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    std::fs::read_to_string(dir.join(names.pop()?)).ok()
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A minimal HTTP/1.0 request; returns (status, headers, body).
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    body: &str,
) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    Ok((status, head.to_string(), body.to_string()))
}

/// GET / and return the body's first word (the app's version), or the error.
pub fn served(port: u16) -> String {
    match http("GET", port, "/", "") {
        Ok((200, _, body)) => body.split_whitespace().next().unwrap_or("").to_string(),
        Ok((status, _, body)) => format!("HTTP {status}: {}", body.trim()),
        Err(e) => format!("error: {e}"),
    }
}

/// Where nginx lives, or a loud failure saying how to get it.
pub fn nginx_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NGINX") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "nginx is not installed: these tests run a real nginx. Install it with \
         `sudo apt-get install -y nginx-light` (or run scripts/test.sh, which does), \
         or point NGINX at the binary"
    );
}

/// A private nginx: own prefix, own config, a free loopback port.
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    child: Child,
}

impl Nginx {
    /// Start nginx with `site` (a rendered `zdd nginx` config) included,
    /// and `workers` worker processes.
    pub fn start(prefix: &Path, port: u16, site: &str, workers: u32) -> Nginx {
        Nginx::prepare(prefix, site, workers);
        let mut child = Command::new(nginx_bin())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let up = wait_until(Duration::from_secs(10), || {
            listening(port) || child.try_wait().ok().flatten().is_some()
        });
        if !up || child.try_wait().ok().flatten().is_some() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            let _ = child.kill();
            panic!("nginx did not start on 127.0.0.1:{port}: {err}\n{log}");
        }
        Nginx {
            port,
            prefix: prefix.to_path_buf(),
            child,
        }
    }

    /// Write the prefix: main config, `site.conf`, log and temp folders.
    pub fn prepare(prefix: &Path, site: &str, workers: u32) {
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        std::fs::write(prefix.join("site.conf"), site).unwrap();
        std::fs::write(prefix.join("nginx.conf"), main_conf(prefix, workers)).unwrap();
    }

    /// `nginx -t` of a prepared prefix: its stderr when nginx rejects it.
    pub fn check(prefix: &Path) -> Result<(), String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(Nginx::test_command(prefix))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The command that tests this nginx's config (`nginx.test_command`).
    pub fn test_command(prefix: &Path) -> String {
        format!(
            "{} -t -q -p {} -c {}",
            nginx_bin().display(),
            prefix.display(),
            prefix.join("nginx.conf").display()
        )
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM makes the master stop its workers (SIGKILL would orphan
    /// them, still listening); the group kill catches any straggler.
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// nginx's main config for a test prefix: `workers` workers, logs and
/// temp files under the prefix, the site from `site.conf`. Started as
/// root, the workers run as nginx's default user (nobody), as in production.
fn main_conf(prefix: &Path, workers: u32) -> String {
    let p = prefix.display();
    format!(
        "worker_processes {workers};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n\
           fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
           include {p}/site.conf;\n}}\n"
    )
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A throw-away app project: a git repo of the reference app, a zdd.toml,
/// zdd's root, and (optionally) a private nginx in front.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub ports: [u16; 2],
    pub nginx_port: u16,
    pub nginx: Option<Nginx>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Project {
    /// A repo with a first commit serving `v1`, and a config around it.
    /// `extra` is appended to zdd.toml.
    pub fn new(extra: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("zdd-test-")
            .tempdir()
            .unwrap();
        // nginx's workers (nobody) look for the switch file below it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ports = [free_port(), free_port()];
        let nginx_port = free_port();
        let p = Project {
            dir,
            ports,
            nginx_port,
            nginx: None,
        };
        let repo = p.repo();
        std::fs::create_dir_all(&repo).unwrap();
        p.git(&["init", "--quiet", "--initial-branch=main"]);
        p.git(&["config", "user.email", "test@example.com"]);
        p.git(&["config", "user.name", "zdd test"]);
        p.commit("v1", "");
        p.write_config(extra);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    pub fn root(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("zdd.toml")
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "name = \"testapp\"\nrepo = \"repo\"\nroot = \"state\"\nbuild = \"sh build.sh\"\nstart = \"./run.sh\"\n\
             ports = [{}, {}]\n{extra}\n\n[env]\nAPP_BIN = \"{}\"\n\n[health]\ntimeout = \"15s\"\ninterval = \"20ms\"\n\n\
             [stop]\ntimeout = \"10s\"\n\n[nginx]\nlisten = \"127.0.0.1:{}\"\npid_file = \"nginx/nginx.pid\"\n\
             test_command = \"{}\"\n{}",
            self.ports[0],
            self.ports[1],
            example("app").display(),
            self.nginx_port,
            Nginx::test_command(&self.path().join("nginx")),
            // For measurements only: the zero-downtime tests in another mode
            // (`ZDD_TEST_NGINX_MODE=round-robin`; see the README's table).
            std::env::var("ZDD_TEST_NGINX_MODE")
                .map(|m| format!("mode = {m:?}\n"))
                .unwrap_or_default()
                // ...and with upstream keep-alive set (`ZDD_TEST_NGINX_KEEPALIVE=0`).
                + &std::env::var("ZDD_TEST_NGINX_KEEPALIVE")
                    .map(|k| format!("keepalive = {k}\n"))
                    .unwrap_or_default(),
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Change the config file's text (e.g. a shorter timeout).
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), f(text)).unwrap();
    }

    /// Spawn zdd with stderr going to a file (to watch its progress).
    pub fn spawn_zdd_logged(&self, args: &[&str], log: &Path) -> Child {
        Command::new(zdd_bin())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// Swap number `i` of a back-and-forth: even ones deploy `v2`, odd ones
    /// roll back to v1. Returns zdd's run and the version nginx should serve.
    pub fn swap(&self, i: usize, v2: &str) -> (Run, &'static str) {
        if i.is_multiple_of(2) {
            (self.zdd(&["deploy", v2]), "v2")
        } else {
            (self.zdd(&["rollback"]), "v1")
        }
    }

    /// The commit slot `slot` ("a", "b") holds.
    pub fn commit_of(&self, slot: &str) -> String {
        self.state()["slots"][slot]["commit"]
            .as_str()
            .unwrap_or_else(|| panic!("slot {slot} holds no commit"))
            .to_string()
    }

    /// The folder of the release `slot` ("a", "b") holds.
    pub fn release_of(&self, slot: &str) -> PathBuf {
        let sha = self.state()["slots"][slot]["commit"]
            .as_str()
            .unwrap_or_else(|| panic!("slot {slot} holds no commit"))
            .to_string();
        self.root().join("releases").join(sha)
    }

    /// The state file's exact bytes.
    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.root().join("state.toml")).unwrap_or_default()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.repo())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commit a version of the app. `run_env` are extra lines for run.sh
    /// (e.g. `export APP_STATUS=500`); returns the sha.
    pub fn commit(&self, version: &str, run_env: &str) -> String {
        self.commit_with(version, run_env, "echo building $ZDD_COMMIT\n")
    }

    pub fn commit_with(&self, version: &str, run_env: &str, build: &str) -> String {
        let repo = self.repo();
        std::fs::write(repo.join("VERSION"), format!("{version}\n")).unwrap();
        let run = format!("#!/bin/sh\n{run_env}\nexec \"$APP_BIN\"\n");
        std::fs::write(repo.join("run.sh"), run).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(repo.join("build.sh"), build).unwrap();
        self.git(&["add", "-A"]);
        self.git(&[
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            &format!("version {version}"),
        ]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Put an app's own files (repo path, file under examples/) in the
    /// repo, commit them as `v1`, and make `start` its start command, with
    /// `env` lines added to [env].
    pub fn use_app(&self, files: &[(&str, &str)], start: &str, env: &str) {
        for (to, from) in files {
            let source = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(from);
            std::fs::copy(&source, self.repo().join(to))
                .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        }
        self.commit("v1", "");
        self.edit_config(|c| {
            c.replace("start = \"./run.sh\"", &format!("start = {start:?}"))
                .replace("[env]\n", &format!("[env]\n{env}"))
        });
    }

    /// Start a private nginx (2 workers) with the config `zdd nginx` renders.
    pub fn start_nginx(&mut self) {
        self.start_nginx_workers(2);
    }

    /// `start_nginx` with `workers` worker processes.
    pub fn start_nginx_workers(&mut self, workers: u32) {
        let site = self.zdd(&["nginx"]);
        assert_eq!(site.code, 0, "{site:?}");
        self.start_nginx_site(&site.stdout, workers);
    }

    /// Start (or restart) the private nginx with this site instead.
    pub fn start_nginx_with(&mut self, site: &str) {
        self.start_nginx_site(site, 2);
    }

    fn start_nginx_site(&mut self, site: &str, workers: u32) {
        self.nginx = None;
        self.nginx = Some(Nginx::start(
            &self.path().join("nginx"),
            self.nginx_port,
            site,
            workers,
        ));
    }

    /// Run zdd with this project's config; fails the test after 120 s.
    pub fn zdd(&self, args: &[&str]) -> Run {
        self.zdd_env(args, &[])
    }

    /// A project with v1 live in slot a behind nginx.
    pub fn live_v1(extra: &str) -> Project {
        let mut p = Project::new(extra);
        p.go_live();
        p
    }

    /// A project with v1 live in slot a behind nginx, and v2 committed.
    pub fn live_v1_with_v2(extra: &str) -> (Project, String) {
        let p = Project::live_v1(extra);
        let v2 = p.commit("v2", "");
        (p, v2)
    }

    /// Start nginx and deploy the tip (v1): it serves.
    pub fn go_live(&mut self) {
        self.start_nginx();
        let r = self.zdd(&["deploy"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(self.served(), "v1");
    }

    /// The history, oldest first (`zdd history --json`).
    pub fn history(&self) -> Vec<serde_json::Value> {
        let h = self.zdd(&["history", "--json"]);
        assert_eq!(h.code, 0, "{h:?}");
        let h: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
        h["history"].as_array().unwrap().clone()
    }

    /// `zdd start NAME DIR PORT -- app` for the reference app serving
    /// `named1` from the folder `named`.
    pub fn start_named(&self, name: &str, port: u16) -> Run {
        let appdir = self.path().join("named");
        std::fs::create_dir_all(&appdir).unwrap();
        std::fs::write(appdir.join("VERSION"), "named1\n").unwrap();
        let app = example("app");
        let port = port.to_string();
        self.zdd(&[
            "start",
            name,
            appdir.to_str().unwrap(),
            &port,
            "--",
            app.to_str().unwrap(),
        ])
    }

    /// What a reboot does: every keeper and app of this project dies at
    /// once (SIGKILL), and none is left.
    pub fn kill_everything(&self) {
        self.kill_all_now();
        assert!(wait_until(Duration::from_secs(10), || self
            .zdd_pids()
            .is_empty()));
    }

    /// No keeper wrote a crash into these logs (names below `logs/`).
    pub fn assert_no_crash_logged(&self, logs: &[&str]) {
        for log in logs {
            let text = std::fs::read_to_string(self.root().join("logs").join(log)).unwrap();
            assert!(!text.contains("exited on its own"), "{log}: {text}");
        }
    }

    /// Run zdd with extra environment variables.
    pub fn zdd_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(zdd_bin());
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.path());
        run_bounded(cmd, Duration::from_secs(120))
    }

    /// What the keeper of `name` (a slot or named process) says: its
    /// `ROOT/run/NAME.keeper` file.
    pub fn keeper_status(&self, name: &str) -> Option<toml::Value> {
        let text = std::fs::read_to_string(self.root().join(format!("run/{name}.keeper"))).ok()?;
        toml::from_str(&text).ok()
    }

    /// The slot nginx's switch points at: `ROOT/live` is `route/a` or
    /// `route/b` (`…/closed` in maintenance); slot a before the first flip.
    pub fn switch(&self) -> &'static str {
        match std::fs::read_link(self.root().join("live")) {
            Ok(t) if t.starts_with("route/b") => "b",
            Ok(t) if t.starts_with("route/a") => "a",
            Ok(t) => panic!("ROOT/live points at {}", t.display()),
            Err(_) => "a",
        }
    }

    pub fn state(&self) -> toml::Value {
        let text =
            std::fs::read_to_string(self.root().join("state.toml")).expect("state.toml exists");
        toml::from_str(&text).expect("state.toml parses")
    }

    pub fn status_json(&self) -> serde_json::Value {
        let r = self.zdd(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{r:?}"));
        // Exit 0 when it serves, 5 when not: as the JSON says.
        let code = if v["serving"] == true { 0 } else { 5 };
        assert_eq!(r.code, code, "{r:?}");
        v
    }

    /// What nginx serves now (the version, or the error).
    pub fn served(&self) -> String {
        served(self.nginx_port)
    }

    /// What slot 0 (a) or 1 (b) serves, asked directly.
    pub fn served_direct(&self, slot: usize) -> String {
        served(self.ports[slot])
    }

    /// Which of the two slot ports accept connections.
    pub fn listening_slots(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if listening(self.ports[0]) {
            v.push("a");
        }
        if listening(self.ports[1]) {
            v.push("b");
        }
        v
    }

    /// SIGKILL to every keeper of this project, then to every app left.
    fn kill_all_now(&self) {
        for pid in self.keeper_pids().into_iter().chain(self.app_pids()) {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Pids of the apps started for this project (keepers aside).
    pub fn app_pids(&self) -> Vec<i32> {
        self.zdd_pids()
            .into_iter()
            .filter(|&pid| !is_keeper(pid))
            .collect()
    }

    /// Pids of the keepers of this project's apps.
    pub fn keeper_pids(&self) -> Vec<i32> {
        self.zdd_pids()
            .into_iter()
            .filter(|&pid| is_keeper(pid))
            .collect()
    }

    /// Pids of every process started for this project: apps and keepers,
    /// builds, by their `ZDD_ROOT`.
    pub fn zdd_pids(&self) -> Vec<i32> {
        let want = format!("ZDD_ROOT={}", self.root().display());
        // A keeper's `zdd rollback` carries this mark instead.
        let rollback = format!("ZDD_ROLLBACK_OF={}", self.root().display());
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            if !zombie
                && env
                    .split(|&b| b == 0)
                    .any(|v| v == want.as_bytes() || v == rollback.as_bytes())
            {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Is `pid` a keeper (`zdd keep ...`)?
pub fn is_keeper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"keep".as_slice()))
}

impl Drop for Project {
    fn drop(&mut self) {
        self.kill_all_now();
        // The cgroups zdd made for this root's apps go too, once empty.
        let root = self.root();
        let mut names = vec!["a".to_string(), "b".to_string()];
        if let Ok(run) = std::fs::read_dir(root.join("run")) {
            names.extend(
                run.flatten().filter_map(|e| {
                    Some(e.file_name().to_str()?.strip_suffix(".toml")?.to_string())
                }),
            );
        }
        for name in names {
            if let Some(cgroup) = zdd::process::fence::app_cgroup_path(&root, &name) {
                wait_until(Duration::from_secs(2), || {
                    zdd::process::fence::remove_cgroup(&cgroup);
                    !cgroup.exists()
                });
            }
        }
    }
}

/// Send `signal` to `pid`; a process already gone is no error.
pub fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Run a command to completion, killing it (and failing) after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = wait_output(&mut child, limit);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Wait for a child with piped output (either may be taken already),
/// bounded in time.
pub fn wait_output(child: &mut Child, limit: Duration) -> Output {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.map(|mut s| s.read_to_end(&mut b));
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.map(|mut s| s.read_to_end(&mut b));
        b
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// The load client running against nginx until `finish` is called.
pub struct Load {
    child: Child,
    stop_file: std::path::PathBuf,
}

impl Load {
    pub fn start(p: &Project, versions: &[&str]) -> Load {
        Load::spawn(
            p,
            versions,
            &[
                "--concurrency",
                "16",
                "--post-ratio",
                "0.5",
                "--keepalive",
                "mixed",
                "--body-size",
                "2048",
            ],
        )
    }

    /// Slow uploads beside the main load: 4 clients of POSTs whose body
    /// comes `delay` (`DUR` or `LOW..HIGH`) after their head (nginx
    /// connects once it has the body).
    pub fn start_slow_uploads(p: &Project, versions: &[&str], delay: &str) -> Load {
        Load::spawn(
            p,
            versions,
            &[
                "--concurrency",
                "4",
                "--post-ratio",
                "1",
                "--keepalive",
                "mixed",
                "--body-size",
                "2048",
                "--slow-body",
                delay,
            ],
        )
    }

    /// GET only, every request's start time and outcome in `samples` (CSV:
    /// start_unix_us,latency_us,method,status,version,error).
    pub fn start_sampled(p: &Project, versions: &[&str], samples: &Path) -> Load {
        Load::spawn(
            p,
            versions,
            &[
                "--concurrency",
                "8",
                "--post-ratio",
                "0",
                "--keepalive",
                "mixed",
                "--samples",
                samples.to_str().unwrap(),
            ],
        )
    }

    fn spawn(p: &Project, versions: &[&str], args: &[&str]) -> Load {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stop_file = p.path().join(format!("stop-load-{n}"));
        let mut cmd = Command::new(example("load"));
        cmd.args(["--url", &format!("http://127.0.0.1:{}/", p.nginx_port)])
            .args(args)
            .args(["--duration", "240s"])
            .arg("--stop-file")
            .arg(&stop_file);
        for v in versions {
            cmd.args(["--expect-version", v]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it reach a steady state before the first swap.
        std::thread::sleep(Duration::from_millis(500));
        Load { child, stop_file }
    }

    /// Stop the load and return its JSON report.
    pub fn finish(mut self) -> serde_json::Value {
        std::fs::write(&self.stop_file, "").unwrap();
        let out = wait_output(&mut self.child, Duration::from_secs(60));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "load report: {e}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

pub fn summary(report: &serde_json::Value) -> String {
    format!(
        "{} requests ({} GET, {} POST), {} failed, p50 {} ms, p99 {} ms, max {} ms, versions {}, errors {}, by status {}",
        report["requests"],
        report["by_method"]["GET"]["requests"],
        report["by_method"]["POST"]["requests"],
        report["failed"],
        report["latency_ms"]["p50"],
        report["latency_ms"]["p99"],
        report["latency_ms"]["max"],
        report["versions"],
        report["errors"],
        report["by_status"],
    )
}
