//! nginx: render the upstream/server config from the built-in (or the
//! user's) minijinja template, write it atomically, test and reload nginx.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil;

/// The built-in template (`nginx/zdd.conf.j2`).
pub const DEFAULT_TEMPLATE: &str = include_str!("../nginx/zdd.conf.j2");
/// The location of the routing probe in the built-in template.
pub const PROBE_PATH: &str = "/.zdd/upstream";

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
}

/// Render the config text.
pub fn render(config: &Config) -> Result<String> {
    let (template, origin) = match &config.nginx.template {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        None => (
            DEFAULT_TEMPLATE.to_string(),
            "built-in template".to_string(),
        ),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let ctx = Context {
        name: &config.name,
        ports: config.ports,
        listen: &config.nginx.listen,
        server_name: &config.nginx.server_name,
        fail_timeout: format!("{}s", config.nginx.fail_timeout.as_secs().max(1)),
        retry_non_idempotent: config.nginx.retry_non_idempotent,
        health_path: &config.health.path,
        probe_path: PROBE_PATH,
        root: &config.root,
    };
    env.render_str(&template, ctx).map_err(|e| {
        Error::Usage(format!(
            "{origin}{}: cannot render the nginx template: {}",
            e.line().map(|l| format!(":{l}")).unwrap_or_default(),
            e.detail().unwrap_or(&e.kind().to_string())
        ))
    })
}

/// `zdd nginx [--write] [--reload]`.
pub fn run(config: &Config, write: bool, reload: bool) -> Result<()> {
    let text = render(config)?;
    if !write {
        print!("{text}");
    } else {
        let output = config.nginx.output.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "{}: set nginx.output to the file `zdd nginx --write` should write",
                config.path.display()
            ))
        })?;
        let previous = std::fs::read(output).ok();
        if previous.as_deref() == Some(text.as_bytes()) {
            log::info!("{} is up to date", output.display());
        } else {
            fsutil::write_atomic(output, text.as_bytes(), 0o644)
                .map_err(Error::io("cannot write the nginx config", output))?;
            log::info!("wrote {}", output.display());
        }
        if reload {
            if let Err(message) = test_config(config) {
                // Put the old file back so that nginx keeps a config it accepts.
                let restored = match &previous {
                    Some(old) => fsutil::write_atomic(output, old, 0o644),
                    None => std::fs::remove_file(output),
                };
                if let Err(e) = restored {
                    return Err(Error::NeedsAttention(format!(
                        "nginx rejected the new config and restoring {} failed: {e}\n{message}",
                        output.display()
                    )));
                }
                return Err(Error::Usage(format!(
                    "nginx rejected the rendered config; {} is unchanged\n{message}",
                    output.display()
                )));
            }
        }
    }
    if reload {
        if !write {
            test_config(config)
                .map_err(|m| Error::Usage(format!("nginx rejected its config\n{m}")))?;
        }
        signal_master(config)?;
        crate::out!("nginx reloaded");
    } else if write {
        crate::out!(
            "{}",
            config
                .nginx
                .output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
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
        Err(text.trim().to_string())
    }
}

fn signal_master(config: &Config) -> Result<()> {
    let path = &config.nginx.pid_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Failed(format!(
            "cannot read nginx's pid file {}: {e}; is nginx running?",
            path.display()
        ))
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| Error::Failed(format!("{} does not hold a pid", path.display())))?;
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
        Error::Failed(format!(
            "cannot signal nginx (pid {pid} from {}): {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_lists_both_ports_with_short_fail_timeout() {
        let c = Config::parse(
            Path::new("/srv/zdd.toml"),
            "name = \"shop\"\nstart = \"x\"\nports = [4001, 4002]\n[nginx]\nlisten = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        let text = render(&c).unwrap();
        assert!(text.contains("upstream shop {"));
        assert!(text.contains("zone shop 64k;"));
        assert!(text.contains("server 127.0.0.1:4001 max_fails=1 fail_timeout=1s;"));
        assert!(text.contains("server 127.0.0.1:4002 max_fails=1 fail_timeout=1s;"));
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(text.contains("proxy_next_upstream error timeout;"));
        assert!(
            !text.contains("keepalive"),
            "no upstream keep-alive by default"
        );
        assert!(text.contains("location = /.zdd/upstream {"));
    }

    #[test]
    fn non_idempotent_retry_is_opt_in() {
        let c = Config::parse(
            Path::new("/srv/zdd.toml"),
            "name = \"shop\"\nstart = \"x\"\n[nginx]\nretry_non_idempotent = true\n",
        )
        .unwrap();
        assert!(render(&c)
            .unwrap()
            .contains("proxy_next_upstream error timeout non_idempotent;"));
    }
}
