//! nginx: render the config zdd needs — the whole site, or for an
//! operator's own server blocks the upstreams (http level) and a snippet
//! (server level) — from the built-in minijinja templates or the user's;
//! decide the steering mode; write the files atomically, test, reload.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::lock::{Lock, LockWait};
use crate::slot::Slot;
use crate::state::State;
use crate::text::out;
use crate::{fsutil, switch};

/// The built-in site template (`nginx/zdd.conf.j2`).
pub const SITE_TEMPLATE: &str = include_str!("../nginx/zdd.conf.j2");
/// The upstreams, for nginx's http level (`nginx/zdd-upstreams.conf.j2`).
pub const UPSTREAMS_TEMPLATE: &str = include_str!("../nginx/zdd-upstreams.conf.j2");
/// The lines for a server block: switch and probe (`nginx/zdd-snippet.conf.j2`).
pub const SNIPPET_TEMPLATE: &str = include_str!("../nginx/zdd-snippet.conf.j2");
/// The location of the routing probe in the built-in templates.
pub const PROBE_PATH: &str = "/.zdd/upstream";
/// The internal location nginx sends public requests to in maintenance.
pub const MAINTENANCE_PATH: &str = "/.zdd/maintenance";

/// What `zdd nginx` renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// A whole site: upstreams and a server block (`nginx.output`)
    Site,
    /// The upstreams alone, for nginx's http level (`nginx.upstreams_output`)
    Upstreams,
    /// Switch and probe, to include in your own server block (`nginx.snippet_output`)
    Snippet,
}

impl Part {
    const ALL: [Part; 3] = [Part::Site, Part::Upstreams, Part::Snippet];

    /// The config key naming where `--write` puts this part.
    fn key(self) -> &'static str {
        match self {
            Part::Site => "nginx.output",
            Part::Upstreams => "nginx.upstreams_output",
            Part::Snippet => "nginx.snippet_output",
        }
    }

    /// As `--part` takes it.
    fn name(self) -> &'static str {
        match self {
            Part::Site => "site",
            Part::Upstreams => "upstreams",
            Part::Snippet => "snippet",
        }
    }

    fn output(self, config: &Config) -> Option<&PathBuf> {
        match self {
            Part::Site => config.nginx.output.as_ref(),
            Part::Upstreams => config.nginx.upstreams_output.as_ref(),
            Part::Snippet => config.nginx.snippet_output.as_ref(),
        }
    }
}

/// What every template sees (the README lists these).
#[derive(Serialize)]
struct Context<'a> {
    name: &'a str,
    ports: [u16; 2],
    listen: &'a str,
    server_name: &'a str,
    fail_timeout: String,
    retry_non_idempotent: bool,
    health_path: &'a str,
    probe_path: &'a str,
    root: &'a Path,
    mode: &'static str,
    /// Rendering a part on its own (with its header comment), not into the site.
    standalone: bool,
    /// What `proxy_pass http://` takes: the upstream, `NAME`.
    upstream: &'a str,
    /// Switch mode: the server's root, `ROOT/live/www` (`switch`).
    live_root: String,
    /// The nginx variable holding the hash key, without `$`.
    key_var: String,
    /// The variable earlier zdds' server blocks proxy to (`zdd_NAME`).
    compat_var: String,
    /// Maintenance: the variables that say a request is public (not zdd's
    /// probe) and the site closed, without `$`.
    public_var: String,
    closed_var: String,
    /// The internal location of the maintenance page (and with `.html`).
    maintenance_path: &'static str,
    /// The page's file, `ROOT/route/maintenance.html`.
    maintenance_page: String,
    /// Its `Retry-After`, in seconds.
    retry_after: u64,
    /// The keys that pick slot a's and slot b's server (`switch::key`).
    key_a: String,
    key_b: String,
    /// What the real path of `live_root` ends with for each slot (regex).
    suffix_a: String,
    suffix_b: String,
    /// `keepalive N` in the upstream (switch mode); 0: none.
    keepalive: u32,
    /// The built-in upstreams part, rendered.
    upstreams_conf: String,
    /// The built-in snippet part, rendered.
    snippet_conf: String,
}

/// The nginx variable holding the hash key: `zdd_`, the name (`-` as
/// `_`), `_key`.
fn key_var(config: &Config) -> String {
    format!("zdd_{}_key", config.name.replace('-', "_"))
}

/// The mode a deploy uses: `nginx.mode` if set; else the switch with the
/// built-in template, and with a custom one whatever it renders: the
/// switch if it sets the switch's root, round-robin if not. A custom
/// template in switch mode must render the switch.
pub fn mode(config: &Config) -> Result<NginxMode> {
    let Some(template) = &config.nginx.template else {
        return Ok(config.nginx.mode.unwrap_or(NginxMode::Switch));
    };
    let text = render_in(config, NginxMode::Switch, Part::Site)?;
    let renders_switch = text.contains(&live_root(config)?) && text.contains(&key_var(config));
    match config.nginx.mode {
        Some(NginxMode::Switch) if !renders_switch => Err(Error::Usage(format!(
            "nginx.template {} renders no switch (neither `root \"{}\";` nor the ${} hash key), but nginx.mode is \"switch\": render {{{{ upstreams_conf }}}} and {{{{ snippet_conf }}}} in it, or set nginx.mode = \"round-robin\"",
            template.display(),
            live_root(config)?,
            key_var(config)
        ))),
        Some(m) => Ok(m),
        None if renders_switch => Ok(NginxMode::Switch),
        None => Ok(NginxMode::RoundRobin),
    }
}

/// The switch's root as nginx takes it, in double quotes, where `"`,
/// `\`, `$` and control characters cannot stand.
fn live_root(config: &Config) -> Result<String> {
    let path = switch::nginx_root(&config.root).display().to_string();
    if path
        .chars()
        .any(|c| c == '"' || c == '\\' || c == '$' || c.is_control())
    {
        return Err(Error::Usage(format!(
            "{}: root {} holds a character nginx cannot take in a path (\", \\, $ or a control character); move root",
            config.path.display(),
            config.root.display()
        )));
    }
    Ok(path)
}

/// Render one part of the config in the configured (or detected) mode.
pub fn render(config: &Config, part: Part) -> Result<String> {
    render_in(config, mode(config)?, part)
}

fn render_in(config: &Config, mode: NginxMode, part: Part) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let mut ctx = Context {
        name: &config.name,
        ports: config.ports,
        listen: &config.nginx.listen,
        server_name: &config.nginx.server_name,
        fail_timeout: format!("{}s", config.nginx.fail_timeout.as_secs().max(1)),
        retry_non_idempotent: config.nginx.retry_non_idempotent,
        health_path: &config.health.path,
        probe_path: PROBE_PATH,
        root: &config.root,
        mode: mode.as_str(),
        standalone: part != Part::Site,
        upstream: &config.name,
        live_root: live_root(config)?,
        key_var: key_var(config),
        compat_var: format!("zdd_{}", config.name.replace('-', "_")),
        public_var: format!("zdd_{}_public", config.name.replace('-', "_")),
        closed_var: format!("zdd_{}_closed", config.name.replace('-', "_")),
        maintenance_path: MAINTENANCE_PATH,
        maintenance_page: switch::maintenance_page(&config.root).display().to_string(),
        retry_after: config.maintenance.retry_after.as_secs(),
        key_a: switch::key(Slot::A),
        key_b: switch::key(Slot::B),
        suffix_a: switch::resolved_suffix(Slot::A),
        suffix_b: switch::resolved_suffix(Slot::B),
        keepalive: config.nginx.keepalive,
        upstreams_conf: String::new(),
        snippet_conf: String::new(),
    };
    let builtin = |env: &minijinja::Environment, text: &str, ctx: &Context| {
        env.render_str(text, ctx)
            .map_err(|e| template_error("built-in template", "the nginx template", &e))
    };
    ctx.upstreams_conf = builtin(&env, UPSTREAMS_TEMPLATE, &ctx)?;
    ctx.snippet_conf = builtin(&env, SNIPPET_TEMPLATE, &ctx)?;
    match part {
        Part::Upstreams => return Ok(ctx.upstreams_conf),
        Part::Snippet => return Ok(ctx.snippet_conf),
        Part::Site => {}
    }
    let (template, origin) = match &config.nginx.template {
        Some(path) => (
            crate::root::read_trusted_input(path, "nginx.template")?,
            path.display().to_string(),
        ),
        None => (SITE_TEMPLATE.to_string(), "built-in template".to_string()),
    };
    env.render_str(&template, &ctx)
        .map_err(|e| template_error(&origin, "the nginx template", &e))
}

/// A template that does not render: `ORIGIN[:LINE]: cannot render WHAT: why`.
pub(crate) fn template_error(origin: &str, what: &str, e: &minijinja::Error) -> Error {
    Error::Usage(format!(
        "{origin}{}: cannot render {what}: {}",
        e.line().map(|l| format!(":{l}")).unwrap_or_default(),
        e.detail().unwrap_or(&e.kind().to_string())
    ))
}

/// What plain `zdd nginx` prints: the whole site, unless the config sets
/// only the parts for its own server blocks; then those parts.
fn printed_by_default(config: &Config) -> Vec<Part> {
    let parts: Vec<Part> = [Part::Upstreams, Part::Snippet]
        .into_iter()
        .filter(|p| p.output(config).is_some())
        .collect();
    match config.nginx.output.is_some() || parts.is_empty() {
        true => vec![Part::Site],
        false => parts,
    }
}

/// `zdd nginx [--part PART] [--write] [--reload]`.
pub fn run(config: &Config, part: Option<Part>, write: bool, reload: bool) -> Result<()> {
    // Once: with a custom template it takes a render to find out.
    let mode = mode(config)?;
    if !write {
        let parts = part.map_or_else(|| printed_by_default(config), |p| vec![p]);
        let mut text = String::new();
        for p in &parts {
            if parts.len() > 1 {
                let output = p.output(config).map(|o| o.display().to_string());
                text.push_str(&format!(
                    "# ---- zdd nginx --part {} ({} = {}) ----\n",
                    p.name(),
                    p.key(),
                    output.unwrap_or_default()
                ));
            }
            text.push_str(&render_in(config, mode, *p)?);
        }
        crate::text::write_stdout(text.as_bytes())
            .map_err(Error::io("cannot write the nginx config to", "stdout"))?;
        if reload {
            test_config(config)
                .map_err(|m| Error::Usage(format!("nginx rejected its config\n{m}")))?;
            signal_master(config)?;
            out!("nginx reloaded");
        }
        return Ok(());
    }
    // --write: the given part, or every part that has an output configured.
    let parts: Vec<Part> = match part {
        Some(p) => vec![p],
        None => Part::ALL
            .into_iter()
            .filter(|p| p.output(config).is_some())
            .collect(),
    };
    if parts.is_empty() {
        return Err(Error::Usage(format!(
            "{}: set nginx.output (a whole site), or nginx.upstreams_output and nginx.snippet_output (for your own server blocks), to say where `zdd nginx --write` writes",
            config.path.display()
        )));
    }
    if mode == NginxMode::Switch {
        prepare_switch(config)?;
    }
    let mut written = Vec::new();
    for part in parts {
        let output = part.output(config).ok_or_else(|| {
            Error::Usage(format!(
                "{}: set {} to the file `zdd nginx --write --part {}` should write",
                config.path.display(),
                part.key(),
                part.name()
            ))
        })?;
        let text = render_in(config, mode, part)?;
        let previous = std::fs::read(output).ok();
        if previous.as_deref() == Some(text.as_bytes()) {
            log::info!("{} is up to date", output.display());
        } else {
            fsutil::write_atomic(output, text.as_bytes(), 0o644).map_err(|e| {
                // Nothing was changed: a folder that is not there is bad config.
                Error::Usage(format!(
                    "cannot write the nginx config {} ({}): {e}",
                    output.display(),
                    part.key()
                ))
            })?;
            log::info!("wrote {}", output.display());
        }
        written.push((output.clone(), previous));
    }
    if reload {
        if let Err(message) = test_config(config) {
            // Put the old files back so that nginx keeps a config it accepts.
            for (output, previous) in &written {
                let restored = match previous {
                    Some(old) => fsutil::write_atomic(output, old, 0o644),
                    None => std::fs::remove_file(output),
                };
                if let Err(e) = restored {
                    return Err(Error::NeedsAttention(format!(
                        "nginx rejected the new config and restoring {} failed: {e}\n{message}",
                        output.display()
                    )));
                }
            }
            let hint = rejection_hint(config, &message);
            return Err(Error::Usage(format!(
                "nginx rejected the rendered config; {} unchanged\n{message}{hint}",
                written
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        signal_master(config)?;
        out!("nginx reloaded");
    } else {
        for (output, _) in &written {
            out!("{}", output.display());
        }
    }
    Ok(())
}

/// What nginx's refusal of the rendered files means, when the files are
/// fine and the cause is elsewhere (empty when nothing is known).
fn rejection_hint(config: &Config, message: &str) -> String {
    let var = key_var(config);
    let var = var.trim_end_matches("_key");
    let upstream = &config.name;
    if message.contains(&format!("unknown \"{var}")) {
        return format!(
            "\na server block proxies to ${var} without including zdd's snippet: add `include {};` to it, before its locations",
            config
                .nginx
                .snippet_output
                .as_deref()
                .map_or("SNIPPET".into(), |p| p.display().to_string())
        );
    }
    let both = config.nginx.output.is_some() && config.nginx.upstreams_output.is_some();
    if both && message.contains(&format!("duplicate upstream \"{upstream}")) {
        return format!(
            "\nnginx.output (a whole site) and nginx.upstreams_output both define upstream {upstream}: keep one of the two ways in {} (with your own server blocks, remove nginx.output and the file it wrote)",
            config.path.display()
        );
    }
    String::new()
}

/// Before nginx reads a config with the switch: its folders exist, nginx's
/// worker can resolve them, and the switch points at the live slot (slot
/// a before the first deploy). While another zdd runs, the switch is left
/// to it. Nothing is written when the root is hidden from nginx.
fn prepare_switch(config: &Config) -> Result<()> {
    let root = &config.root;
    if let Some((folder, m)) = switch::hidden_by(root) {
        let why = format!(
            "nginx's worker user cannot search {} (mode {m:04o}), so it cannot resolve the switch {}; run `chmod o+x {}`",
            folder.display(),
            switch::link(root).display(),
            folder.display()
        );
        // As root, nginx is the system's, its workers another user. An
        // nginx of the user running zdd sees its own folders.
        if nix::unistd::geteuid().is_root() {
            return Err(Error::Usage(format!("{why} (nothing was written)")));
        }
        log::warn!("{why}, unless nginx's workers run as the user running zdd");
    }
    crate::root::prepare(root, &[])?;
    crate::root::prepare(root, &switch::FOLDERS)?;
    let want = match State::load(&config.state_path(), config.ports) {
        Ok(state) => switch::wanted(&state),
        Err(e) => {
            log::warn!("did not point the switch at the live slot: {e}");
            return Ok(());
        }
    };
    if switch::read(root).ok().flatten() == Some(want) {
        return Ok(());
    }
    match Lock::acquire(root, LockWait::No, "zdd nginx --write") {
        Ok(_lock) => match switch::flip(root, want) {
            Ok(()) => log::info!("pointed the switch at slot {}", want.slot),
            Err(e) => log::warn!(
                "cannot point the switch {} at slot {}: {e}",
                switch::link(root).display(),
                want.slot
            ),
        },
        Err(e) => log::warn!("did not point the switch at slot {}: {e}", want.slot),
    }
    Ok(())
}

/// Run `nginx.test_command`; `Err` holds nginx's output.
fn test_config(config: &Config) -> std::result::Result<(), String> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&config.nginx.test_command)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", config.nginx.test_command))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        // nginx quotes the files it read: one escaped line per line.
        Err(text
            .trim()
            .lines()
            .map(|l| crate::text::escape(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// SIGHUP to nginx's master, from `nginx.pid_file`: a file only root (or
/// zdd's user) could have written, naming a process that is an nginx
/// master right now (a stale file may name a reused pid).
fn signal_master(config: &Config) -> Result<()> {
    let path = &config.nginx.pid_file;
    let not_running = |why: String| {
        Error::Failed(format!(
            "nginx is not running: {why}; start nginx ({}): it reads its config as it is now, which passed nginx.test_command",
            start_hint(&config.nginx.test_command)
        ))
    };
    let text = crate::root::read_trusted(path).map_err(|e| match e {
        crate::root::Untrusted::Io(e) if e.kind() == std::io::ErrorKind::NotFound => Error::Failed(format!(
            "nginx does not seem to run, or nginx.pid_file is not its pid file: {} (nginx.pid_file) is not there; if nginx runs with its own nginx.conf, set nginx.pid_file to the `pid` that config names (`nginx -T 2>/dev/null | grep -m1 '^pid'` for the system nginx); else start nginx ({}): it reads its config as it is now, which passed nginx.test_command",
            path.display(),
            start_hint(&config.nginx.test_command)
        )),
        crate::root::Untrusted::Io(e) => Error::Failed(format!(
            "cannot read nginx's pid file {} (nginx.pid_file): {e}",
            path.display()
        )),
        crate::root::Untrusted::Refused(why) => {
            Error::Usage(format!("nginx's pid file (nginx.pid_file) {why}"))
        }
    })?;
    if text.trim().is_empty() {
        return Err(not_running(format!(
            "its pid file {} is empty (`nginx -t` leaves it so while nginx is stopped)",
            path.display()
        )));
    }
    let pid: i32 = text.trim().parse().ok().filter(|&p| p > 1).ok_or_else(|| {
        Error::Failed(format!(
            "{} does not hold a pid (it holds `{}`); is nginx.pid_file nginx's pid file?",
            path.display(),
            crate::text::escape(text.trim().chars().take(40).collect::<String>().as_str())
        ))
    })?;
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !title.starts_with(b"nginx: master process") {
        return Err(not_running(format!(
            "its pid file {} names pid {pid}, which is {} (the file is stale)",
            path.display(),
            match crate::process::command_of(pid) {
                Some(c) => format!("`{}`, not nginx's master", crate::text::escape(&c)),
                None => "gone".to_string(),
            }
        )));
    }
    let before = accepting_workers(pid);
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
        Error::Failed(format!(
            "cannot signal nginx (pid {pid} from {}): {e}",
            path.display()
        ))
    })?;
    // The reload is done when no worker of the old config takes a new
    // connection: a deploy right after must meet the new one.
    let limit = config.nginx.route_timeout;
    let t = std::time::Instant::now();
    while accepting_workers(pid).iter().any(|w| before.contains(w)) {
        if t.elapsed() >= limit {
            return Err(Error::Failed(format!(
                "nginx (pid {pid}) got the reload signal, but after {} its workers are still those of its old config, which keeps serving: nginx could not apply the new one (its error log says why: a port it cannot bind, say)",
                humantime::format_duration(limit)
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// nginx's workers that take new connections (pid, start time): not those
/// of an old config that finish their requests after a reload ("worker
/// process is shutting down", its listening sockets closed).
fn accepting_workers(master: i32) -> Vec<(i32, u64)> {
    crate::process::Table::now()
        .children_of(master)
        .into_iter()
        .filter(|&(pid, _)| {
            crate::process::command_of(pid).is_some_and(|title| {
                title.starts_with("nginx: worker process") && !title.contains("shutting down")
            })
        })
        .collect()
}

/// How to start the nginx that `test_command` tests: the same command
/// without `-t`, or the system's service.
fn start_hint(test_command: &str) -> String {
    let words: Vec<&str> = test_command.split_whitespace().collect();
    match words.as_slice() {
        ["nginx", "-t"] | ["/usr/sbin/nginx", "-t"] => {
            "`systemctl start nginx`, or `nginx`".to_string()
        }
        [nginx, rest @ ..] if nginx.ends_with("nginx") && rest.contains(&"-t") => {
            let start: Vec<&str> = std::iter::once(*nginx)
                .chain(rest.iter().copied().filter(|w| *w != "-t"))
                .collect();
            format!("`{}`", start.join(" "))
        }
        _ => "`systemctl start nginx`, or the way this nginx is started".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_is_started_the_way_it_is_tested() {
        assert_eq!(
            start_hint("nginx -t"),
            "`systemctl start nginx`, or `nginx`"
        );
        assert_eq!(
            start_hint("/usr/sbin/nginx -t -p /srv/nginx -c /srv/nginx/nginx.conf"),
            "`/usr/sbin/nginx -p /srv/nginx -c /srv/nginx/nginx.conf`"
        );
        assert_eq!(
            start_hint("sudo nginx -t"),
            "`systemctl start nginx`, or the way this nginx is started"
        );
    }

    fn config(extra: &str) -> Config {
        Config::parse(
            Path::new("/srv/zdd.toml"),
            &format!("name = \"shop\"\nstart = \"x\"\nports = [4001, 4002]\n[nginx]\nlisten = \"127.0.0.1:8080\"\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn default_site_steers_with_the_switch() {
        let text = render(&config(""), Part::Site).unwrap();
        assert!(text.contains("map $realpath_root $zdd_shop_key {\n    volatile;\n    \"~/route/a(/closed)?/www$\" slot-a;\n    \"~/route/b(/closed)?/www$\" slot-b;\n}"));
        assert!(text.contains("upstream shop {\n    zone shop 64k;\n    hash $zdd_shop_key;\n    server 127.0.0.1:4001 max_fails=0;\n    server 127.0.0.1:4002 max_fails=0;\n    keepalive 16;\n}"));
        assert!(!text.contains("backup"), "hash takes no backup servers");
        assert!(text.contains("    root \"/srv/live/www\";"));
        assert!(text.contains("    open_file_cache off;"));
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(text.contains("proxy_pass http://shop;"));
        assert!(text.contains("proxy_next_upstream error timeout;"));
        assert!(text.contains("    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";"));
        assert!(
            text.contains("        proxy_set_header Connection \"\";\n    }"),
            "the location's own header list keeps keep-alive on"
        );
        assert!(text.contains("location = /.zdd/upstream {"));
        assert!(text.contains("add_header X-Zdd-Mode switch always;"));
        assert!(text.contains("add_header X-Zdd-Key $zdd_shop_key always;"));
        assert!(text.contains("add_header X-Zdd-Root $realpath_root always;"));
        assert!(!text.contains("if (-f"), "no per-request file test");
        assert!(text.contains(
            "    if ($zdd_shop_closed) {\n        rewrite ^ /.zdd/maintenance last;\n    }"
        ));
        assert!(text.contains("alias \"/srv/route/maintenance.html\";"));
        assert!(text.contains("add_header Retry-After 120 always;"));
        assert_eq!(mode(&config("")).unwrap(), NginxMode::Switch);
    }

    #[test]
    fn keepalive_zero_renders_none() {
        let text = render(&config("keepalive = 0\n"), Part::Site).unwrap();
        assert!(!text.contains("keepalive"), "{text}");
        assert!(!text.contains("Connection"), "{text}");
        assert!(!text.contains("proxy_http_version"), "{text}");
    }

    #[test]
    fn round_robin_lists_both_slots_in_one_upstream() {
        let c = config("mode = \"round-robin\"\n");
        let text = render(&c, Part::Site).unwrap();
        assert!(text.contains("upstream shop {"));
        assert!(text.contains("server 127.0.0.1:4001 max_fails=1 fail_timeout=1s;\n    server 127.0.0.1:4002 max_fails=1 fail_timeout=1s;\n}"));
        assert!(text.contains("proxy_pass http://shop;"));
        assert!(!text.contains("keepalive"), "{text}");
        assert!(!text.contains("Connection"), "{text}");
        assert!(!text.contains("realpath"), "{text}");
        assert!(!text.contains("root "), "{text}");
    }

    #[test]
    fn parts_for_an_own_server_block() {
        let c = config("");
        let upstreams = render(&c, Part::Upstreams).unwrap();
        assert!(upstreams.contains("upstream shop {") && !upstreams.contains("server {"));
        assert!(upstreams.contains("map $realpath_root $zdd_shop_key {"));
        let snippet = render(&c, Part::Snippet).unwrap();
        assert!(snippet.starts_with("# shop: zdd's lines for a server block"));
        assert!(snippet.contains("root \"/srv/live/www\";\n"));
        assert!(!snippet.contains("upstream shop {") && !snippet.contains("listen"));
    }

    #[test]
    fn a_custom_template_without_the_switch_is_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.j2");
        std::fs::write(
            &plain,
            "upstream {{ name }} { server 127.0.0.1:{{ ports[0] }}; }\n",
        )
        .unwrap();
        let with_switch = dir.path().join("switch.j2");
        std::fs::write(
            &with_switch,
            "{{ upstreams_conf }}\nserver {\n{{ snippet_conf }}\n}\n",
        )
        .unwrap();
        let at = |p: &Path| config(&format!("template = {:?}\n", p.display().to_string()));
        assert_eq!(mode(&at(&plain)).unwrap(), NginxMode::RoundRobin);
        assert_eq!(mode(&at(&with_switch)).unwrap(), NginxMode::Switch);
        let c = config(&format!(
            "template = {:?}\nmode = \"round-robin\"\n",
            with_switch.display().to_string()
        ));
        assert_eq!(
            mode(&c).unwrap(),
            NginxMode::RoundRobin,
            "an explicit mode wins"
        );
        let c = config(&format!(
            "template = {:?}\nmode = \"switch\"\n",
            plain.display().to_string()
        ));
        let e = mode(&c).unwrap_err().to_string();
        assert!(e.contains("renders no switch"), "{e}");
        assert!(e.contains("plain.j2"), "{e}");
    }

    #[test]
    fn a_root_nginx_cannot_quote_is_refused() {
        let c = Config::parse(
            Path::new("/srv/zdd.toml"),
            "name = \"shop\"\nstart = \"x\"\nroot = \"/srv/$HOME\"\n",
        )
        .unwrap();
        let e = render(&c, Part::Site).unwrap_err();
        assert!(e.to_string().contains("nginx cannot take in a path"), "{e}");
    }

    #[test]
    fn rendered_configs() {
        let c = config("server_name = \"shop.example.com\"\n");
        insta::assert_snapshot!("site_switch", render(&c, Part::Site).unwrap());
        insta::assert_snapshot!("upstreams", render(&c, Part::Upstreams).unwrap());
        insta::assert_snapshot!("snippet", render(&c, Part::Snippet).unwrap());
        let rr = config("mode = \"round-robin\"\n");
        insta::assert_snapshot!("site_round_robin", render(&rr, Part::Site).unwrap());
        insta::assert_snapshot!("snippet_round_robin", render(&rr, Part::Snippet).unwrap());
    }

    #[test]
    fn every_part_ends_with_a_newline() {
        for part in Part::ALL {
            assert!(
                render(&config(""), part).unwrap().ends_with("}\n"),
                "{part:?}"
            );
        }
    }

    #[test]
    fn non_idempotent_retry_is_opt_in() {
        let c = config("retry_non_idempotent = true\n");
        assert!(render(&c, Part::Site)
            .unwrap()
            .contains("proxy_next_upstream error timeout non_idempotent;"));
    }
}
