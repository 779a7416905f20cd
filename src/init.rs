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

[env]
# NODE_ENV = "production"

[hooks]
# before_start = "npm run migrate"
# verify       = "./smoke-test http://127.0.0.1:$PORT"

[nginx]
listen      = "80"
server_name = "_"
output      = "/etc/nginx/conf.d/myapp.conf"   # `zdd nginx --write` writes the whole site here
# pid_file     = "/run/nginx.pid"   # the nginx `zdd nginx --reload` signals; for a private one,
#                                   # the `pid` its nginx.conf names
# test_command = "nginx -t"         # run before a reload; for a private nginx, test its own
#                                   # config: "nginx -t -p /srv/nginx -c /srv/nginx/nginx.conf"
# For your own server blocks, the two parts instead (README: setting up):
# upstreams_output = "/etc/nginx/conf.d/myapp-upstreams.conf"
# snippet_output   = "/etc/nginx/snippets/zdd-myapp.conf"
"#;

/// `zdd init`: write the starter at `path` (`--config`/`$ZDD_CONFIG`, else
/// `./zdd.toml`) unless something is there already.
pub fn init(path: Option<&Path>) -> Result<()> {
    let path = path.unwrap_or(Path::new(DEFAULT_FILE));
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
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
        .map_err(Error::io("cannot write", path))?;
    let config = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let zdd = std::env::current_exe().unwrap_or_else(|_| "zdd".into());
    let (zdd, config) = (zdd.display(), config.display());
    out!("wrote {config}; edit it (name, repo, start, ports), then:");
    out!("  1. nginx: `{zdd} -c {config} nginx --write --reload` (or include the output of `zdd nginx` in your site)");
    out!("  2. first deploy: `{zdd} -c {config} deploy`, then `zdd status`");
    out!("  3. cron, in /etc/cron.d/zdd: */5 * * * * root {zdd} -c {config} deploy --wait=2m");
    out!("     and at boot: @reboot root {zdd} -c {config} up --wait=5m");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn starter_config_parses() {
        let c =
            crate::config::Config::parse(std::path::Path::new("/srv/app/zdd.toml"), super::STARTER)
                .unwrap();
        assert_eq!(c.name, "myapp");
    }
}
