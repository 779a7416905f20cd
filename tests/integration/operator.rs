//! Living with zdd: status/history JSON schemas, nginx --write --reload
//! against a real nginx, init, hooks, running the app as another user,
//! completions and the man page.

use crate::support::*;
use serde_json::Value;

fn assert_type(v: &Value, key: &str, kind: &str) {
    let x = &v[key];
    let ok = match kind {
        "string" => x.is_string(),
        "string?" => x.is_string() || x.is_null(),
        "u64" => x.is_u64(),
        "u64?" => x.is_u64() || x.is_null(),
        "bool" => x.is_boolean(),
        "bool?" => x.is_boolean() || x.is_null(),
        "array" => x.is_array(),
        "object?" => x.is_object() || x.is_null(),
        "object" => x.is_object(),
        _ => unreachable!(),
    };
    assert!(ok, "{key} should be {kind}: {v}");
}

fn assert_history_entry(e: &Value) {
    for (k, t) in [
        ("at", "string"),
        ("action", "string"),
        ("outcome", "string"),
        ("commit", "string"),
        ("slot", "string"),
        ("phases", "object"),
    ] {
        assert_type(e, k, t);
    }
    for k in [
        "fetch_ms", "build_ms", "ready_ms", "route_ms", "drain_ms", "total_ms",
    ] {
        assert_type(&e["phases"], k, "u64");
    }
    assert!(["deploy", "rollback"].contains(&e["action"].as_str().unwrap()));
    assert!(["ok", "failed", "interrupted"].contains(&e["outcome"].as_str().unwrap()));
}

#[test]
fn status_and_history_json_follow_their_schema() {
    let p = Project::new("");
    // Before anything is deployed.
    let s = p.status_json();
    assert_eq!(s["version"], 1);
    assert!(s["active"].is_null());
    assert_eq!(s["next_deploy"], "a");
    assert!(s["last"].is_null());
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let s = p.status_json();
    for (k, t) in [
        ("version", "u64"),
        ("name", "string"),
        ("active", "string?"),
        ("next_deploy", "string"),
        ("rollback_to", "string?"),
        ("slots", "array"),
        ("last", "object?"),
        ("drift", "array"),
    ] {
        assert_type(&s, k, t);
    }
    let slots = s["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    for slot in slots {
        for (k, t) in [
            ("slot", "string"),
            ("port", "u64"),
            ("status", "string"),
            ("commit", "string?"),
            ("subject", "string?"),
            ("running", "bool"),
            ("pid", "u64?"),
            ("started_at", "string?"),
            ("uptime_s", "u64?"),
            ("healthy", "bool?"),
            ("health", "string?"),
        ] {
            assert_type(slot, k, t);
        }
    }
    assert_eq!(slots[0]["pid"].as_u64().map(|p| p > 1), Some(true));
    assert_history_entry(&s["last"]);

    let h = p.zdd(&["history", "--json"]);
    let h: Value = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(h["version"], 1);
    assert_eq!(h["name"], "testapp");
    for e in h["history"].as_array().unwrap() {
        assert_history_entry(e);
    }

    let text = p.zdd(&["status"]);
    assert!(
        text.stdout.starts_with("testapp: live slot a on port"),
        "{text:?}"
    );
    assert!(text.stdout.contains("\"version v1\""), "{text:?}");
    assert!(text.stdout.contains("healthy"), "{text:?}");
    assert!(text.stdout.contains("last: "), "{text:?}");
}

#[test]
fn nginx_write_and_reload_against_a_real_nginx() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\noutput = \"nginx/site.conf\"\n"));
    // nginx starts with an old config whose upstream lists dead ports.
    let old_site = p
        .zdd(&["nginx"])
        .stdout
        .replace(&format!("127.0.0.1:{} ", p.ports[0]), "127.0.0.1:9 ");
    p.start_nginx_with(&old_site);
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nroute_timeout = \"1s\"\n"));
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "nginx routes the first deploy nowhere: {r:?}");
    assert!(
        r.stderr.contains("nginx did not route to slot a")
            && r.stderr
                .contains("`zdd nginx` prints the config zdd expects"),
        "{r:?}"
    );
    assert!(p.served().contains("502"), "{}", p.served());

    let r = p.zdd(&["nginx", "--write", "--reload"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "nginx reloaded");
    let written = std::fs::read_to_string(p.path().join("nginx/site.conf")).unwrap();
    assert_eq!(written, p.zdd(&["nginx"]).stdout);
    assert_eq!(p.zdd(&["deploy"]).code, 0, "cron tries it again");
    assert_eq!(p.served(), "v1");

    // A template nginx rejects leaves the old file in place and says why.
    let bad = p.path().join("bad.conf.j2");
    std::fs::write(
        &bad,
        "upstream {{ name }} { server 127.0.0.1:{{ ports[0] }}; }\nnot_a_directive on;\n",
    )
    .unwrap();
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            &format!("[nginx]\ntemplate = \"{}\"\n", bad.display()),
        )
    });
    let r = p.zdd(&["nginx", "--write", "--reload"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("nginx rejected the rendered config"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("unknown directive \"not_a_directive\""),
        "nginx's own message: {r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("nginx/site.conf")).unwrap(),
        written
    );
    assert_eq!(p.served(), "v1");
}

/// The parts for an operator's own server blocks: `--write --reload`
/// writes the upstreams and the snippet, and deploys through a server block
/// that includes them lose nothing.
#[test]
fn own_server_block_with_the_upstreams_and_snippet_parts() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            "[nginx]\nupstreams_output = \"nginx/zdd-upstreams.conf\"\nsnippet_output = \"nginx/zdd-snippet.conf\"\n",
        )
    });
    let parts = p.path().join("nginx");
    // Written as for an earlier zdd (`$zdd_testapp`), which still works.
    let own_site = format!(
        "include {0}/zdd-upstreams.conf;\n\
         server {{\n  listen 127.0.0.1:{1};\n  server_name shop.test;\n  include {0}/zdd-snippet.conf;\n\
           location / {{ proxy_pass http://$zdd_testapp; proxy_next_upstream error timeout; proxy_set_header Host $host; }}\n}}\n",
        parts.display(),
        p.nginx_port
    );
    // A first nginx with a placeholder, then the parts written and reloaded.
    p.start_nginx_with(&format!(
        "server {{ listen 127.0.0.1:{}; return 503; }}\n",
        p.nginx_port
    ));
    std::fs::write(parts.join("site.conf"), &own_site).unwrap();
    let r = p.zdd(&["nginx", "--write", "--reload"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "nginx reloaded");
    assert_eq!(
        std::fs::read_to_string(parts.join("zdd-snippet.conf")).unwrap(),
        p.zdd(&["nginx", "--part", "snippet"]).stdout
    );
    assert!(std::fs::read_to_string(parts.join("zdd-upstreams.conf"))
        .unwrap()
        .contains("upstream testapp {"));
    assert!(wait_until(std::time::Duration::from_secs(10), || p
        .served()
        .contains("502")));

    let r = p.zdd(&["deploy"]);
    assert_eq!(
        r.code, 0,
        "right after the reload, nginx runs the new config: {r:?}"
    );
    let v2 = p.commit("v2", "");
    let load = Load::start(&p, &["v1", "v2"]);
    for args in [vec!["deploy", v2.as_str()], vec!["rollback"]] {
        let r = p.zdd(&args);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("nginx routes to slot"), "{r:?}");
    }
    let report = load.finish();
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    assert_eq!(p.served(), "v1");
}

/// `nginx/shop.example.conf`, with its two parts from `zdd nginx`, is a
/// site nginx accepts (given a certificate and ports it may use).
#[test]
fn the_sample_own_site_is_accepted_by_nginx() {
    let p = Project::new("");
    p.edit_config(|c| c.replace("name = \"testapp\"", "name = \"shop\""));
    let dir = p.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=shop.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    for (part, file) in [
        ("upstreams", "shop-upstreams.conf"),
        ("snippet", "zdd-shop.conf"),
    ] {
        let r = p.zdd(&["nginx", "--part", part]);
        assert_eq!(r.code, 0, "{r:?}");
        std::fs::write(dir.join(file), r.stdout).unwrap();
    }
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/shop.example.conf"),
    )
    .unwrap();
    let (http, https) = (free_port(), free_port());
    let site = sample
        .replace(
            "/etc/nginx/snippets/zdd-shop.conf",
            &dir.join("zdd-shop.conf").display().to_string(),
        )
        .replace(
            "/etc/letsencrypt/live/shop.example.com/fullchain.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/letsencrypt/live/shop.example.com/privkey.pem",
            &key.display().to_string(),
        )
        .replace("listen [::]:80;", "")
        .replace("listen [::]:443 ssl http2;", "")
        .replace("listen 80;", &format!("listen {http};"))
        .replace("listen 127.0.0.1:80;", &format!("listen 127.0.0.1:{http};"))
        .replace("listen 443 ssl", &format!("listen {https} ssl"));
    let site = format!(
        "include {};\n{site}",
        dir.join("shop-upstreams.conf").display()
    );
    Nginx::prepare(&dir, &site, 2);
    if let Err(e) = Nginx::check(&dir) {
        panic!("{e}\n{site}");
    }
}

#[test]
fn init_writes_a_starter_config_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(zdd_bin());
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("ZDD_CONFIG");
        run_bounded(cmd, std::time::Duration::from_secs(30))
    };
    let r = run(&["init"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("1. ") && r.stdout.contains("2. ") && r.stdout.contains("3. "),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("nginx --write --reload")
            && r.stdout.contains("zdd.toml deploy")
            && r.stdout.contains("*/5 * * * * root "),
        "{r:?}"
    );
    // `-c PATH` writes there instead.
    let r = run(&["-c", "other.toml", "init"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(dir.path().join("other.toml").exists());
    let written = std::fs::read_to_string(dir.path().join("zdd.toml")).unwrap();
    // The starter config is valid: zdd reads it.
    let r = run(&["nginx"]);
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::write(dir.path().join("zdd.toml"), "# mine\n").unwrap();
    let r = run(&["init"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("zdd.toml")).unwrap(),
        "# mine\n"
    );
    assert!(written.contains("[health]"));
}

fn hooks_config(verify: &str) -> String {
    format!(
        "\n[hooks]\nafter_checkout = \"echo after_checkout $PORT >> $ZDD_ROOT/../hooks.log\"\n\
         before_start = \"echo before_start $PORT >> $ZDD_ROOT/../hooks.log\"\n\
         verify = \"echo verify $PORT >> $ZDD_ROOT/../hooks.log; {verify}\"\n\
         after_swap = \"echo after_swap $PORT >> $ZDD_ROOT/../hooks.log\"\n"
    )
}

#[test]
fn hooks_run_in_order_and_a_failing_verify_keeps_the_old_slot() {
    let mut p = Project::new("");
    p.start_nginx();
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    p.edit_config(|c| format!("{c}{}", hooks_config("curl_missing_is_fine=1")));
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    let log = std::fs::read_to_string(p.path().join("hooks.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["after_checkout", "before_start", "verify", "after_swap"],
        "{log}"
    );
    let slot_b = p.ports[1].to_string();
    assert!(
        lines.iter().all(|l| l.ends_with(&slot_b)),
        "every hook sees the new slot's port; verify runs there while the slot is only nginx's backup: {log}"
    );

    // A failing verify aborts before the swap.
    p.edit_config(|c| {
        c.replace(
            "curl_missing_is_fine=1",
            "echo smoke test failed >&2; exit 1",
        )
    });
    let v3 = p.commit("v3", "");
    let r = p.zdd(&["deploy", &v3]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("the verify hook failed (exit status: 1)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("smoke test failed"), "{r:?}");
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["b"]);
}

#[test]
fn app_runs_as_the_configured_user() {
    if !is_root() {
        eprintln!("NOT RUN: running the app as another user needs root");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let p = Project::new("user = \"nobody\"");
    // nobody must reach the app binary and the project folder.
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served_direct(0), "v1");
    let apps = p.app_pids();
    assert_eq!(apps.len(), 1, "one app (its keeper aside): {apps:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", apps[0])).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("65534"),
        "{uid_line}"
    );
    let slot = std::fs::metadata(p.release_of("a").join("VERSION")).unwrap();
    assert_eq!(slot.uid(), 65534, "the release belongs to the user");
    let state = std::fs::metadata(p.root().join("state.toml")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (0, 0o600));
    let logs = std::fs::metadata(p.root().join("logs")).unwrap();
    assert_eq!((logs.uid(), logs.mode() & 0o777), (0, 0o700));
    let log = std::fs::metadata(p.root().join("logs/a.log")).unwrap();
    assert_eq!((log.uid(), log.mode() & 0o777), (0, 0o600));

    // A non-root zdd with `user` set is a config error.
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(zdd_bin())
        .arg("--config")
        .arg(p.config_path())
        .arg("status");
    let r = run_bounded(cmd, std::time::Duration::from_secs(30));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(":7:8: `user = \"nobody\"` needs zdd to run as root"),
        "{r:?}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let p = Project::new("");
    for shell in ["bash", "zsh", "fish"] {
        let r = p.zdd(&["completions", shell]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("rollback") && r.stdout.contains("wait"),
            "{shell}"
        );
    }
    let r = p.zdd(&["man"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH zdd 1"),
        "{r:?}"
    );
    assert!(r.stdout.contains("deploy"));
}

/// An own server block that forgets zdd's snippet gets the fix, not a
/// guess: at `zdd nginx --reload` when it proxies to `$zdd_NAME`, and at
/// the deploy's check when it proxies to the upstream itself.
#[test]
fn an_own_server_block_without_the_snippet_is_named_with_the_line_to_add() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            "[nginx]\nupstreams_output = \"nginx/zdd-upstreams.conf\"\nsnippet_output = \"nginx/zdd-snippet.conf\"\nroute_timeout = \"1s\"\n",
        )
    });
    let parts = p.path().join("nginx");
    let port = p.nginx_port;
    let site = |proxy: &str| {
        format!(
            "include {0}/zdd-upstreams.conf;\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{proxy}; proxy_set_header Host $host; }}\n}}\n",
            parts.display(),
        )
    };
    p.start_nginx_with(&format!(
        "server {{ listen 127.0.0.1:{}; return 503; }}\n",
        p.nginx_port
    ));
    std::fs::write(parts.join("site.conf"), site("$zdd_testapp")).unwrap();
    let r = p.zdd(&["nginx", "--write", "--reload"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "a server block proxies to $zdd_testapp without including zdd's snippet: add `include {}/zdd-snippet.conf;` to it",
            parts.display()
        )),
        "{r:?}"
    );

    std::fs::write(parts.join("site.conf"), site("testapp")).unwrap();
    assert_eq!(p.zdd(&["nginx", "--write", "--reload"]).code, 0);
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "does not include zdd's snippet — add `include {}/zdd-snippet.conf;` to the app's server block",
            parts.display()
        )),
        "{r:?}"
    );
}
