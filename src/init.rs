//! `zdd init`: a commented starter `zdd.toml`, never overwriting one.

use std::io::Write;
use std::path::Path;

use crate::config::DEFAULT_FILE;
use crate::error::{Error, Result};
use crate::text::out;

/// The starter config; every key is documented in the README.
pub const STARTER: &str = r#"# zdd.toml: how zdd deploys this app. Relative paths are relative to this file.

name   = "myapp"                    # names the nginx upstream; letters, digits, _ and -
repo   = "/srv/git/myapp.git"       # anything `git clone` accepts
branch = "main"                     # what `zdd deploy` with no COMMIT deploys
# root = "/var/lib/zdd/myapp"       # slots, logs and state (default: this folder)
# build = "npm ci --omit=dev"       # run in the slot before start (sh -c)
start  = "node server.js"           # run in the slot with PORT set; keep it one command
ports  = [3001, 3002]               # slot a, slot b
# user = "www-data"                 # run build and app as this user (zdd must be root)

[health]
path     = "/"                      # GET http://127.0.0.1:$PORT/ must answer 2xx
timeout  = "30s"                    # give up on a new slot after this
interval = "100ms"                  # longest pause between probes (the first is immediate, then 2 ms, doubling)
# expect_body = "ok"

[stop]
signal  = "SIGTERM"                 # the app finishes the requests in flight and exits
timeout = "30s"                     # then SIGKILL to its process group

[releases]
keep = 5                            # good releases kept on disk: what `zdd rollback` can bring back

[env]
# NODE_ENV = "production"

[hooks]
# before_start = "npm run migrate"
# verify       = "./smoke-test http://127.0.0.1:$PORT"

[nginx]
listen      = "80"
server_name = "_"
# Give nginx the slots in ONE of two ways (not both: each defines upstream
# myapp, and nginx -t refuses a duplicate upstream):
# 1. zdd writes a whole site (upstreams and a server block):
output      = "/etc/nginx/conf.d/myapp.conf"
# 2. or your own server blocks include zdd's two parts (README: "Setting up
#    a real app", step 2); comment out `output` above and set:
# upstreams_output = "/etc/nginx/conf.d/myapp-upstreams.conf"   # http level
# snippet_output   = "/etc/nginx/snippets/zdd-myapp.conf"       # include in each server block
# pid_file     = "/run/nginx.pid"   # the nginx `zdd nginx --reload` signals; for a private one,
#                                   # the `pid` its nginx.conf names
# test_command = "nginx -t"         # run before a reload; for a private nginx, test its own
#                                   # config: "nginx -t -p /srv/nginx -c /srv/nginx/nginx.conf"
"#;

/// `zdd init`: write the starter at `path` (`--config`/`$ZDD_CONFIG`, a
/// folder meaning its `zdd.toml`, else `./zdd.toml`) unless something is
/// there already; a folder on the way that is not there is created.
pub fn init(path: Option<&Path>) -> Result<()> {
    let path = crate::config::Config::locate(path).unwrap_or_else(|| DEFAULT_FILE.into());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))?;
            log::info!("created {}", dir.display());
        }
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "{} already exists; zdd init never overwrites it",
                path.display()
            )))
        }
        // Nothing was written: a folder that is not there is bad input.
        Err(e) => {
            return Err(Error::Usage(format!(
                "cannot create {}: {e}",
                path.display()
            )))
        }
    };
    file.write_all(STARTER.as_bytes())
        .map_err(Error::io("cannot write", &path))?;
    let config = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    for line in next_steps(&config.display().to_string(), cron_binary().as_deref()) {
        out!("{line}");
    }
    Ok(())
}

/// What to do after `zdd init` wrote `config`. Commands a person types say
/// `zdd`; cron's lines need its full path (cron's PATH is short): `cron`,
/// where zdd is found on `$PATH`.
fn next_steps(config: &str, cron: Option<&str>) -> Vec<String> {
    let zdd = format!("zdd -c {config}");
    let cron_zdd = format!("{} -c {config}", cron.unwrap_or("/usr/local/bin/zdd"));
    let mut lines = vec![
        format!("wrote {config}; edit it (name, repo, start, ports, nginx), then:"),
        format!("  1. nginx: `{zdd} nginx --write --reload` (or include the output of `{zdd} nginx` in your site)"),
        format!("  2. first deploy: `{zdd} deploy`, then `{zdd} status`"),
        format!("  3. cron, in /etc/cron.d/zdd: */5 * * * * root {cron_zdd} deploy --wait=2m"),
        format!("     and at boot: @reboot root {cron_zdd} up --wait=5m"),
    ];
    if cron.is_none() {
        lines.push(
            "     (zdd is not on $PATH: install it as /usr/local/bin/zdd, or put its path in those lines)"
                .into(),
        );
    }
    lines
}

/// The `zdd` that `$PATH` finds, as a full path.
fn cron_binary() -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("zdd"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn starter_config_parses() {
        let c =
            crate::config::Config::parse(std::path::Path::new("/srv/app/zdd.toml"), super::STARTER)
                .unwrap();
        assert_eq!(c.name, "myapp");
        // One way to give nginx the slots is on, the other commented out.
        assert!(c.nginx.output.is_some());
        assert!(c.nginx.upstreams_output.is_none() && c.nginx.snippet_output.is_none());
    }

    #[test]
    fn next_steps_say_zdd_and_keep_the_config() {
        insta::assert_snapshot!(super::next_steps("/etc/zdd/shop/zdd.toml", None).join("\n"));
        let lines = super::next_steps("/etc/zdd/shop/zdd.toml", Some("/usr/bin/zdd"));
        assert!(lines[3].contains("root /usr/bin/zdd -c /etc/zdd/shop/zdd.toml deploy"));
        assert_eq!(lines.len(), 5);
    }
}
