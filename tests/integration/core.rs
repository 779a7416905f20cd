//! The core flow (issue: deploy, rollback, start, stop, status through a
//! real nginx): after every step exactly one slot listens and nginx
//! serves the expected version.

use crate::support::*;
use std::time::Duration;

#[test]
fn deploy_deploy_rollback_through_nginx() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.start_nginx();
    assert!(
        p.served().contains("502"),
        "nothing deployed yet: {}",
        p.served()
    );

    // First deploy: the tip of `branch`, no COMMIT.
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("deployed "), "{r:?}");
    assert!(r.stdout.contains("in slot a"), "{r:?}");
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);

    // Second deploy, named by sha.
    let v2 = p.commit("v2", "");
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&v2[..12]) && r.stdout.contains("slot b"),
        "{r:?}"
    );
    assert!(r.stderr.contains("nginx routes to slot b after"), "{r:?}");
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["b"]);
    let state = p.state();
    assert_eq!(state["active"].as_str(), Some("b"));
    assert_eq!(state["next_deploy"].as_str(), Some("a"));
    assert_eq!(state["slots"]["b"]["commit"].as_str(), Some(v2.as_str()));
    assert_eq!(
        std::fs::read_link(p.root().join("current")).unwrap(),
        std::path::PathBuf::from(format!("releases/{v2}"))
    );

    // Rollback: slot a still holds v1, built.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("rolled back to "), "{r:?}");
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);

    // Deploy with no COMMIT after the branch moved: the new tip.
    let v3 = p.commit("v3", "");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&v3[..12]), "{r:?}");
    assert_eq!(p.served(), "v3");
    assert_eq!(p.listening_slots(), ["b"]);

    // No-op: the live commit again, named and not named.
    let pid_before = p.state()["slots"]["b"]["process"]["pid"].as_integer();
    let r = p.zdd(&["deploy", &v3]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("already live"), "{r:?}");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout, "",
        "cron mode prints nothing when nothing changed: {r:?}"
    );
    assert_eq!(
        r.stderr, "",
        "cron mode prints nothing when nothing changed: {r:?}"
    );
    assert_eq!(
        p.state()["slots"]["b"]["process"]["pid"].as_integer(),
        pid_before,
        "nothing restarted"
    );
    assert_eq!(p.listening_slots(), ["b"]);

    // A tag works as COMMIT too.
    p.git(&["tag", "release-1", &v2]);
    let r = p.zdd(&["deploy", "release-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.trim_end().ends_with("; reused its kept release"),
        "v2's release is kept, built: {r:?}"
    );
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["a"]);

    // status --json tells the same story.
    let s = p.status_json();
    assert_eq!(s["version"], 1);
    assert_eq!(s["active"], "a");
    assert_eq!(s["next_deploy"], "b");
    assert_eq!(s["rollback_to"], v3.as_str());
    let a = &s["slots"][0];
    assert_eq!(a["slot"], "a");
    assert_eq!(a["status"], "live");
    assert_eq!(a["running"], true);
    assert_eq!(a["healthy"], true);
    assert_eq!(a["commit"], v2.as_str());
    assert_eq!(a["subject"], "version v2");
    assert_eq!(s["slots"][1]["running"], false);
    assert_eq!(s["drift"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["last"]["action"], "deploy");
    assert_eq!(s["last"]["outcome"], "ok");

    let h = p.zdd(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let actions: Vec<_> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["deploy", "deploy", "rollback", "deploy", "deploy"]
    );
}

#[test]
fn nginx_output_is_accepted_by_nginx_t() {
    let p = Project::new("");
    let site = p.zdd(&["nginx"]);
    assert_eq!(site.code, 0, "{site:?}");
    let prefix = p.path().join("nginx");
    Nginx::prepare(&prefix, &site.stdout, 2);
    if let Err(e) = Nginx::check(&prefix) {
        panic!("nginx -t rejected:\n{}\n{e}", site.stdout);
    }
    assert!(site
        .stdout
        .contains(&format!("server 127.0.0.1:{} ", p.ports[0])));
    assert!(site
        .stdout
        .contains(&format!("server 127.0.0.1:{} ", p.ports[1])));
}

#[test]
fn start_and_stop_a_named_process() {
    let p = Project::new("");
    let port = free_port();
    let r = p.start_named("web", port);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("started web (pid "), "{r:?}");
    assert_eq!(served(port), "named1");
    let record = std::fs::read_to_string(p.root().join("run/web.toml")).unwrap();
    assert!(record.contains(&format!("port = {port}")), "{record}");

    // Starting it again is refused while it runs.
    let r = p.start_named("web", port);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already running"), "{r:?}");

    let r = p.zdd(&["stop", "web"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("stopped web (pid "), "{r:?}");
    assert!(wait_until(Duration::from_secs(5), || !listening(port)));
    assert!(!p.root().join("run/web.toml").exists());

    let r = p.zdd(&["stop", "web"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("nothing named web was started here"),
        "{r:?}"
    );
}

#[test]
fn start_without_a_config_keeps_records_in_zdd_root() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = example("app");
    let root = dir.path().join("records");
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.args([
        "start",
        "solo",
        dir.path().to_str().unwrap(),
        &port.to_string(),
        "--",
    ])
    .arg(&app)
    .current_dir(dir.path())
    .env_remove("ZDD_CONFIG")
    .env("ZDD_ROOT", &root)
    .env("APP_VERSION", "solo1");
    let r = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(served(port), "solo1");
    assert!(root.join("run/solo.toml").exists());
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.args(["stop", "solo"])
        .current_dir(dir.path())
        .env_remove("ZDD_CONFIG")
        .env("ZDD_ROOT", &root);
    let r = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!listening(port));
}

#[test]
fn stop_slot_stops_the_live_slot_and_status_says_so() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.start_nginx();
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.listening_slots(), ["a"]);
    let r = p.zdd(&["stop", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("stopped slot a"), "{r:?}");
    assert!(p.listening_slots().is_empty());
    let s = p.status_json();
    assert!(
        s["drift"].as_array().unwrap().iter().any(|d| d
            .as_str()
            .unwrap()
            .contains("slot a is live but not running")),
        "{s}"
    );
    // The next cron deploy starts it again in place (as after a reboot):
    // no rebuild elsewhere, and slot b keeps the previous release.
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("holds") && r.stderr.contains("starting it again"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);
    assert_eq!(p.status_json()["drift"].as_array().unwrap().len(), 0);
}
