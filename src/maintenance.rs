//! `zdd maintenance on|off`: close the site behind a page that nginx
//! answers every public request with (503, `Retry-After`), or open it
//! again — through the switch, with no reload: the switch points at the
//! live slot's closed folder (`route/SLOT/closed`), where the rendered
//! config sends public requests to the page and zdd's probe still to the
//! slot, so deploys and rollbacks go on while the site is closed. The
//! state records it (since when, the message), so that every later flip,
//! a reboot and `zdd up` keep it until `off`.

use std::time::{Duration, Instant};

use crate::config::{Config, NginxMode};
use crate::error::{Error, Result};
use crate::lock::{Lock, LockWait};
use crate::state::{MaintenanceState, State};
use crate::text::out;
use crate::{fsutil, health, nginx, root, switch};

/// The built-in page (`nginx/maintenance.html.j2`).
pub const PAGE_TEMPLATE: &str = include_str!("../nginx/maintenance.html.j2");
/// The message when `--message` is not given.
pub const DEFAULT_MESSAGE: &str = "We are down for maintenance and will be back shortly.";
/// The longest message taken (it goes into every 503 page).
const MAX_MESSAGE: usize = 2000;

/// `zdd maintenance on [--message TEXT]`.
pub fn on(config: &Config, message: Option<&str>, wait: LockWait) -> Result<()> {
    let message = message.unwrap_or(DEFAULT_MESSAGE).trim();
    if message.chars().count() > MAX_MESSAGE {
        return Err(Error::Usage(format!(
            "the maintenance message has {} characters; take at most {MAX_MESSAGE}",
            message.chars().count()
        )));
    }
    let (root, _lock, mut state) = begin(config, wait, "zdd maintenance on")?;
    let before = state.maintenance.clone();
    let since = before
        .as_ref()
        .map(|m| m.since.clone())
        .unwrap_or_else(crate::text::now);
    let page = render_page(config, message, &since)?;
    let page_path = switch::maintenance_page(root);
    fsutil::write_atomic(&page_path, page.as_bytes(), 0o644)
        .map_err(Error::io("cannot write", &page_path))?;
    state.maintenance = Some(MaintenanceState {
        since: since.clone(),
        message: message.to_string(),
    });
    set(config, &state)?;
    if let Err(why) = confirm(config, true) {
        state.maintenance = before;
        set(config, &state)?;
        return Err(Error::Failed(format!(
            "{why}; the switch is back as it was, and maintenance is {}",
            if state.maintenance.is_some() {
                "still on"
            } else {
                "off"
            }
        )));
    }
    out!(
        "maintenance on since {since}: nginx answers every public request with 503 and {}",
        page_path.display()
    );
    Ok(())
}

/// `zdd maintenance off`.
pub fn off(config: &Config, wait: LockWait) -> Result<()> {
    let (root, _lock, mut state) = begin(config, wait, "zdd maintenance off")?;
    let closed = switch::read(root).ok().flatten().is_some_and(|p| p.closed);
    if state.maintenance.is_none() && !closed {
        out!("maintenance is not on; nothing to do");
        return Ok(());
    }
    state.maintenance = None;
    set(config, &state)?;
    confirm(config, false).map_err(Error::Failed)?;
    match state.active {
        Some(live) => out!("maintenance off: nginx sends requests to slot {live} again"),
        None => out!("maintenance off"),
    }
    Ok(())
}

/// Switch mode, root prepared, the lock taken, the state loaded.
fn begin<'a>(
    config: &'a Config,
    wait: LockWait,
    command: &str,
) -> Result<(&'a std::path::Path, Lock, State)> {
    if nginx::mode(config)? != NginxMode::Switch {
        return Err(Error::Usage(format!(
            "{}: maintenance needs switch mode (nginx.mode = \"switch\"): in round-robin mode nginx has no switch to close",
            config.path.display()
        )));
    }
    let root = config.root.as_path();
    root::prepare(root, &[])?;
    root::prepare(root, &switch::FOLDERS)?;
    let lock = Lock::acquire(root, wait, command)?;
    let state = State::load(&config.state_path(), config.ports)?;
    Ok((root, lock, state))
}

/// Save `state` (it leads), then point the switch where it says.
fn set(config: &Config, state: &State) -> Result<()> {
    state.save(&config.state_path())?;
    let want = switch::wanted(state);
    switch::flip(&config.root, want).map_err(|e| {
        Error::NeedsAttention(format!(
            "cannot point the switch {} at slot {}{}: {e}; the state says maintenance is {}",
            switch::link(&config.root).display(),
            want.slot,
            if want.closed { " (closed)" } else { "" },
            if want.closed { "on" } else { "off" }
        ))
    })
}

/// Ask nginx, until `nginx.route_timeout`, until a public request shows
/// the page (`closed`) or not.
fn confirm(config: &Config, closed: bool) -> std::result::Result<(), String> {
    let t = Instant::now();
    let limit = config.nginx.route_timeout;
    loop {
        let shown = health::maintenance_shown(
            &config.nginx.probe_url,
            config.nginx.probe_host.as_deref(),
            config.health.request_timeout,
        )?;
        if shown == closed {
            return Ok(());
        }
        if t.elapsed() >= limit {
            return Err(match closed {
                true => format!(
                    "nginx did not answer with zdd's maintenance page within {}: the config it runs predates `zdd maintenance`, or the server block that answers {} lacks zdd's snippet; run `zdd nginx --write --reload`",
                    humantime::format_duration(limit),
                    config.nginx.probe_url
                ),
                false => format!(
                    "nginx still answers with the maintenance page after {}; look in nginx's error log",
                    humantime::format_duration(limit)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The page: the operator's (`maintenance.page`, read as trusted input) or
/// the built-in one, rendered with `message` and `since`, HTML-escaped.
pub fn render_page(config: &Config, message: &str, since: &str) -> Result<String> {
    let (template, origin) = match &config.maintenance.page {
        Some(path) => (
            root::read_trusted_input(path, "maintenance.page")?,
            path.display().to_string(),
        ),
        None => (PAGE_TEMPLATE.to_string(), "the built-in page".to_string()),
    };
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.render_str(
        &template,
        minijinja::context! { message => message, since => since, name => &config.name },
    )
    .map_err(|e| nginx::template_error(&origin, "the maintenance page", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(
            std::path::Path::new("/srv/zdd.toml"),
            &format!("name = \"shop\"\nstart = \"x\"\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn the_message_is_escaped() {
        let page = render_page(
            &config(""),
            "<script>alert(1)</script> & \"quotes\"",
            "2026-12-02T08:00:00Z",
        )
        .unwrap();
        assert!(
            page.contains(
                "<p>&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; &quot;quotes&quot;</p>"
            ),
            "{page}"
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.starts_with("<!doctype html>"), "{page}");
    }

    #[test]
    fn an_own_page_gets_the_message_escaped_too() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("page.html");
        std::fs::write(
            &own,
            "<p>{{ name }}: {{ message }} (since {{ since }})</p>\n",
        )
        .unwrap();
        let c = config(&format!(
            "[maintenance]\npage = {:?}\n",
            own.display().to_string()
        ));
        let page = render_page(&c, "a <b>", "T").unwrap();
        assert_eq!(page, "<p>shop: a &lt;b&gt; (since T)</p>");
        std::fs::write(&own, "{{ message ").unwrap();
        let e = render_page(&c, "x", "T").unwrap_err().to_string();
        assert!(
            e.contains("page.html:1: cannot render the maintenance page"),
            "{e}"
        );
    }
}
