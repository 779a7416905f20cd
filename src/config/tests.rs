//! The config's parse: defaults, paths, and an error at the right
//! file:line:col for each way a file can be wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::sections::probe_authority;
use super::Config;
use crate::error::Result;

fn parse(text: &str) -> Result<Config> {
    Config::parse(Path::new("/etc/zdd/zdd.toml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("name = \"shop\"\nstart = \"./run\"\n").unwrap();
    assert_eq!(c.ports, [3001, 3002]);
    assert_eq!(c.branch, "main");
    assert_eq!(c.root, PathBuf::from("/etc/zdd"));
    assert_eq!(c.health.interval, Duration::from_millis(100));
    assert_eq!(c.stop.signal, Signal::SIGTERM);
    assert_eq!(c.nginx.probe_url, "http://127.0.0.1:80/.zdd/upstream");
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let c =
        parse("name = \"s\"\nstart = \"x\"\nroot = \"state\"\nrepo = \"../git/s.git\"\n").unwrap();
    assert_eq!(c.root, PathBuf::from("/etc/zdd/state"));
    assert_eq!(c.repo.as_deref(), Some("/etc/git/s.git"));
    let c = parse("name = \"s\"\nstart = \"x\"\nrepo = \"git@host:s.git\"\n").unwrap();
    assert_eq!(c.repo.as_deref(), Some("git@host:s.git"));
}

#[test]
fn unknown_key_names_line_and_column() {
    let e = err("name = \"s\"\nstart = \"x\"\n\n[health]\n  tiemout = \"3s\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:5:3: unknown field `tiemout`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_the_value() {
    let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"soon\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:11: invalid duration \"soon\""),
        "{e}"
    );
    // One list of units, zdd's.
    let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"30x\"\n");
    assert!(
        e.contains(
            "invalid duration \"30x\" (unknown unit \"x\"); expected a number with ms, s, m or h"
        ),
        "{e}"
    );
    assert!(!e.contains("supported units"), "{e}");
}

#[test]
fn equal_ports_are_rejected_with_position() {
    let e = err("name = \"s\"\nstart = \"x\"\nports = [3001, 3001]\n");
    assert_eq!(
        e,
        "/etc/zdd/zdd.toml:3:9: the two slot ports must differ, both are 3001"
    );
}

#[test]
fn missing_start_is_an_error() {
    let e = err("name = \"s\"\n");
    assert!(e.contains("missing field `start`"), "{e}");
    assert!(e.starts_with("/etc/zdd/zdd.toml:1:1"), "{e}");
}

#[test]
fn start_is_one_command() {
    let e = err("name = \"s\"\nstart = \". venv/bin/activate && gunicorn app:app\"\n");
    assert_eq!(
        e,
        "/etc/zdd/zdd.toml:2:9: `start` begins with the shell builtin `.`, which cannot be exec'd; zdd runs it as `sh -c \"exec START\"`, so the app replaces the shell and gets zdd's signals; put the steps in a script and start that (ending in `exec …`), or run the program directly (a venv's `venv/bin/gunicorn …` needs no `activate`)"
    );
    for (start, op) in [
        ("npm run build && node server.js", "&&"),
        ("node a.js; node b.js", ";"),
        ("node server.js | logger", "|"),
        ("node server.js || true", "||"),
        ("node server.js &", "&"),
        ("node a.js\nnode b.js", "a line break"),
    ] {
        let e = super::parse::one_command(start).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "`start` must be one command, not several joined by {op};"
            )),
            "{start:?}: {e}"
        );
    }
    for fine in [
        "gunicorn -w 2 app:app",
        "venv/bin/gunicorn --access-logformat '%(h)s | %(r)s; ok' app:app",
        "node server.js 2>&1",
        "node server.js >&2",
        "exec node \"a;b.js\" &>/dev/null",
        "./run\\;me",
        "NODE_ENV=production node server.js",
        "venv/bin/gunicorn \\\n  --bind 127.0.0.1:$PORT app:app\n",
    ] {
        assert_eq!(super::parse::one_command(fine), Ok(()), "{fine:?}");
    }
    // A builtin behind an assignment or an `exec` is still a builtin.
    for builtin in ["exec source venv/bin/activate", "A=1 cd app"] {
        assert!(super::parse::one_command(builtin).is_err(), "{builtin:?}");
    }
}

#[test]
fn shared_paths_stay_inside_the_release() {
    let c = parse("name = \"s\"\nstart = \"x\"\nshared = [\"uploads/\", \".env\"]\n").unwrap();
    assert_eq!(
        c.shared,
        [
            super::Shared {
                path: "uploads".into(),
                dir: true
            },
            super::Shared {
                path: ".env".into(),
                dir: false
            }
        ]
    );
    let e = err("name = \"s\"\nstart = \"x\"\nshared = [\"../etc\"]\n");
    assert!(
        e.starts_with(
            "/etc/zdd/zdd.toml:3:11: shared path \"../etc\" must stay inside the release"
        ),
        "{e}"
    );
    for bad in ["/srv/up", "a//b", "./x", "", "/"] {
        let e = err(&format!(
            "name = \"s\"\nstart = \"x\"\nshared = [{bad:?}]\n"
        ));
        assert!(e.contains("must stay inside the release"), "{bad:?}: {e}");
    }
    let e = err("name = \"s\"\nstart = \"x\"\nshared = [\"public/\", \"public/uploads/\"]\n");
    assert!(e.contains("overlaps \"public\""), "{e}");
    let e =
        err("name = \"s\"\nstart = \"x\"\nshared = [\"public/\"]\ncache = [\"public/assets/\"]\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:10: cache path \"public/assets/\" overlaps \"public\""),
        "{e}"
    );
}

#[test]
fn leading_assignments_are_found_with_their_quotes() {
    let end = super::parse::assignments_end;
    assert_eq!(end("node server.js"), 0);
    assert_eq!(end("A=1 B='x y' node s.js"), "A=1 B='x y' ".len());
    assert_eq!(end("  A=\"q r\"  exec n"), "  A=\"q r\"  ".len());
    assert_eq!(end("A=1"), 3, "only assignments");
    assert_eq!(end("1A=x n"), 0, "not a name");
    assert_eq!(end("./a=b"), 0);
}

#[test]
fn bad_name_and_signal() {
    assert!(
        err("name = \"a b\"\nstart = \"x\"\n").starts_with("/etc/zdd/zdd.toml:1:8: invalid name")
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[stop]\nsignal = \"SIGNOPE\"\n");
    assert!(e.contains(":4:10: unknown signal"), "{e}");
    let c = parse("name = \"s\"\nstart = \"x\"\n[stop]\nsignal = \"quit\"\n").unwrap();
    assert_eq!(c.stop.signal, Signal::SIGQUIT);
}

#[test]
fn health_path_and_fail_timeout_errors_point_at_the_value() {
    let e = err("name = \"s\"\nstart = \"x\"\n[health]\npath = \"healthz\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:8: health.path must start with '/'"),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[nginx]\nfail_timeout = \"500ms\"\n");
    assert!(
        e.starts_with(
            "/etc/zdd/zdd.toml:4:16: nginx.fail_timeout must be between 1s and 1h, got 500ms"
        ),
        "{e}"
    );
}

#[test]
fn env_cannot_override_what_zdd_sets() {
    let e = err("name = \"s\"\nstart = \"x\"\n[env]\nA = \"1\"\nPORT = \"9\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:5:1: PORT is set by zdd itself"),
        "{e}"
    );
    // Every ZDD_ name is zdd's, those to come too.
    let e = err("name = \"s\"\nstart = \"x\"\n[env]\nZDD_FUTURE = \"1\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:1: ZDD_FUTURE is set by zdd itself"),
        "{e}"
    );
    let c = parse("name = \"s\"\nstart = \"x\"\n[env]\nA = \"1\"\n").unwrap();
    assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
}

#[test]
fn zero_durations_and_tls_listen_are_refused() {
    let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"0s\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:11: stop.timeout must be between 100ms and 1h, got 0s"),
        "{e}"
    );
    let c = parse("name = \"s\"\nstart = \"x\"\n[stop]\nsettle = \"0s\"\n").unwrap();
    assert_eq!(
        c.stop.settle,
        Duration::ZERO,
        "no settle at all is a choice"
    );
    assert!(
        err("name = \"s\"\nstart = \"x\"\n[health]\ninterval = \"0ms\"\n")
            .contains("health.interval must be between 1ms and 1m, got 0s")
    );
    assert!(
        err("name = \"s\"\nstart = \"x\"\n[nginx]\nlisten = \"443 ssl\"\n")
            .contains("set nginx.probe_url")
    );
    assert!(parse("name = \"s\"\nstart = \"x\"\n[nginx]\nlisten = \"443 ssl\"\nprobe_url = \"http://127.0.0.1:8081/.zdd/upstream\"\n").is_ok());
}

#[test]
fn fixed_size_lists_refuse_extra_entries() {
    let e = err("name = \"s\"\nstart = \"x\"\nports = [3001, 3002, 3003]\n");
    assert_eq!(
        e,
        "/etc/zdd/zdd.toml:3:9: ports (slot a, slot b) must list exactly two numbers, got 3"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[health]\nexpect_status = [200, 299, 300]\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:17: health.expect_status [LOW, HIGH] must list exactly two numbers, got 3"),
        "{e}"
    );
    assert!(err("name = \"s\"\nstart = \"x\"\nports = [3001]\n").contains("got 1"));
}

#[test]
fn durations_have_bounds_per_key() {
    let e = err("name = \"s\"\nstart = \"x\"\n[health]\ntimeout = \"500000000 years\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:11: health.timeout must be between 100ms and 1h, got "),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[stop]\ntimeout = \"2h\"\n");
    assert!(
        e.contains("stop.timeout must be between 100ms and 1h, got 2h"),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[nginx]\nroute_timeout = \"1ms\"\n");
    assert!(
        e.contains("nginx.route_timeout must be between 100ms and 10m"),
        "{e}"
    );
    assert!(parse("name = \"s\"\nstart = \"x\"\n[health]\ninterval = \"1ms\"\n").is_ok());
}

#[test]
fn nginx_parameters_cannot_break_out_of_their_directive() {
    for (key, value) in [
        ("server_name", "shop.test; include /etc/passwd"),
        ("server_name", "a { b"),
        ("listen", "80 }"),
        ("listen", "80\\nx"),
        ("listen", "$port"),
        ("server_name", "\\\"quoted\\\""),
    ] {
        let e = err(&format!(
            "name = \"s\"\nstart = \"x\"\n[nginx]\n{key} = \"{value}\"\n"
        ));
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:"),
            "{key} = {value}: {e}"
        );
        assert!(
            e.contains("which nginx does not take there"),
            "{key} = {value}: {e}"
        );
    }
    let c = parse("name = \"s\"\nstart = \"x\"\n[nginx]\nserver_name = \"~^(www\\\\.)?shop\\\\.test$ shop.test\"\nlisten = \"127.0.0.1:8080 default_server\"\n").unwrap();
    assert_eq!(c.nginx.server_name, "~^(www\\.)?shop\\.test$ shop.test");
}

#[test]
fn a_backslash_that_would_escape_the_end_of_server_name_is_refused() {
    // Rendered as `server_name good.example a\;`, it swallowed the next line.
    for value in ["good.example a\\\\", "a\\\\ b", "a\\\\\\\\\\\\"] {
        let e = err(&format!(
            "name = \"s\"\nstart = \"x\"\n[nginx]\nserver_name = \"{value}\"\n"
        ));
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:15: nginx.server_name = ")
                && e.contains("escapes what follows it"),
            "{value}: {e}"
        );
    }
    // One escaped backslash, or a regex's `\.`, escapes something visible.
    assert!(parse("name = \"s\"\nstart = \"x\"\n[nginx]\nserver_name = \"a\\\\\\\\\"\n").is_ok());
}

#[test]
fn env_names_and_values_must_fit_an_environment() {
    let e = err("name = \"s\"\nstart = \"x\"\n[env]\nSECRET = \"a\\u0000b\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:1: [env] SECRET holds a NUL character"),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[env]\n\"A=B\" = \"1\"\n");
    assert!(e.contains("cannot be an environment variable name"), "{e}");
}

#[test]
fn probe_url_must_be_plain_http() {
    for bad in [
        "not a url",
        "https://127.0.0.1/.zdd/upstream",
        "http:///x",
        "http://",
    ] {
        let e = err(&format!(
            "name = \"s\"\nstart = \"x\"\n[nginx]\nprobe_url = {bad:?}\n"
        ));
        assert!(
            e.starts_with("/etc/zdd/zdd.toml:4:13: nginx.probe_url"),
            "{bad}: {e}"
        );
    }
    assert!(parse(
        "name = \"s\"\nstart = \"x\"\n[nginx]\nprobe_url = \"http://[::1]:8081/.zdd/upstream\"\n"
    )
    .is_ok());
}

#[test]
fn probe_url_follows_listen() {
    assert_eq!(probe_authority("8080"), "127.0.0.1:8080");
    assert_eq!(
        probe_authority("127.0.0.2:81 default_server"),
        "127.0.0.2:81"
    );
    assert_eq!(probe_authority("*:80"), "127.0.0.1:80");
    assert_eq!(probe_authority("[::]:80"), "[::1]:80");
}

#[test]
fn the_example_config_parses_with_every_key() {
    let c = parse(include_str!("../../examples/zdd.toml")).unwrap();
    assert_eq!(c.shared.len(), 1);
    assert_eq!(c.cache.len(), 1);
    assert_eq!(c.logs.max_size, 10 * 1024 * 1024);
    assert_eq!(c.releases.keep, 5);
    assert_eq!(c.nginx.keepalive, 16);
    assert_eq!(c.stop.settle, Duration::ZERO);
    assert_eq!(c.maintenance.retry_after, Duration::from_secs(120));
}

#[test]
fn keepalive_and_maintenance_keys_are_checked() {
    let c = parse("name = \"s\"\nstart = \"x\"\n[nginx]\nkeepalive = 0\n[maintenance]\nretry_after = \"30s\"\npage = \"page.html\"\n").unwrap();
    assert_eq!(c.nginx.keepalive, 0);
    assert_eq!(c.maintenance.retry_after, Duration::from_secs(30));
    assert_eq!(
        c.maintenance.page.as_deref(),
        Some(Path::new("/etc/zdd/page.html"))
    );
    let e = parse("name = \"s\"\nstart = \"x\"\n[nginx]\nkeepalive = 5000\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:13: nginx.keepalive = 5000"),
        "{e}"
    );
    let e = parse("name = \"s\"\nstart = \"x\"\n[maintenance]\nretry_after = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("maintenance.retry_after"), "{e}");
}

#[test]
fn logs_keys_take_sizes_with_units_and_refuse_what_cannot_cap() {
    let c = parse("name = \"s\"\nstart = \"x\"\n").unwrap();
    assert_eq!(c.logs, super::LogPolicy::DEFAULT);
    assert_eq!(c.logs.max_size, 10 << 20);
    let c = parse(
        "name = \"s\"\nstart = \"x\"\n[logs]\nmax_size = \"2MiB\"\nkeep = 1\ntimestamps = true\n",
    )
    .unwrap();
    assert_eq!(
        (c.logs.max_size, c.logs.keep, c.logs.timestamps),
        (2 << 20, 1, true)
    );
    for (written, bytes) in [
        ("\"1G\"", 1u64 << 30),
        ("\"512 KiB\"", 512 << 10),
        ("3000000", 3_000_000),
    ] {
        let c = parse(&format!(
            "name = \"s\"\nstart = \"x\"\n[logs]\nmax_size = {written}\n"
        ));
        match c {
            Ok(c) => assert_eq!(c.logs.max_size, bytes, "{written}"),
            // 512 KiB is below the smallest cap.
            Err(e) => assert!(
                bytes < 1 << 20 && e.to_string().contains("1MiB to 64GiB"),
                "{e}"
            ),
        }
    }
    let e = err("name = \"s\"\nstart = \"x\"\n[logs]\nmax_size = \"10 parsecs\"\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:12: invalid size \"10 parsecs\""),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[logs]\nmax_size = 1000\n");
    assert!(
        e.contains("logs.max_size = 1000 bytes is out of bounds"),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[logs]\nkeep = 0\n");
    assert!(
        e.starts_with("/etc/zdd/zdd.toml:4:8: logs.keep = 0 would throw the whole log away"),
        "{e}"
    );
    let e = err("name = \"s\"\nstart = \"x\"\n[logs]\nkept = 3\n");
    assert!(e.contains("unknown field `kept`"), "{e}");
}
