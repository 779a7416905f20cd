//! The switch at every step of a swap: zdd killed or interrupted at each
//! one, and an nginx that cannot see the switch. Each time the version that
//! served keeps serving, no request is lost, and the next run converges to
//! one healthy slot, the switch pointing at it, the state saying so.

use crate::support::*;

/// One slot runs and serves `want` through nginx, the switch and the state
/// agree on it, and `status` sees no drift.
fn assert_converged(p: &Project, slot: &str, want: &str) {
    assert_eq!(p.served(), want);
    assert_eq!(p.listening_slots(), [slot], "one slot listens at rest");
    assert_eq!(p.switch(), slot, "the switch points at the live slot");
    let s = p.status_json();
    assert_eq!(s["active"], slot, "{s}");
    assert_eq!(s["switch"], slot, "{s}");
    assert_eq!(s["drift"].as_array().unwrap().len(), 0, "{s}");
}

#[test]
fn zdd_killed_at_each_step_of_a_swap_converges_without_losing_a_request() {
    let _heavy = heavy();
    let (p, v2) = Project::live_v1_with_v2("");
    let load = Load::start(&p, &["v1", "v2"]);
    for step in ["start", "recorded", "flipped", "confirmed", "stopping"] {
        let fault = format!("{step}:KILL");
        let r = p.zdd_env(&["deploy", &v2], &[("ZDD_TEST_FAULT", &fault)]);
        assert_eq!(r.code, -1, "killed at {step}: {r:?}");
        assert!(!p.served().starts_with("error"), "{step}: {}", p.served());
        // The next run converges: deploying v2 again finishes the job.
        let r = p.zdd(&["deploy", &v2]);
        assert_eq!(r.code, 0, "after a kill at {step}: {r:?}");
        assert_converged(&p, "b", "v2");
        let r = p.zdd(&["rollback"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_converged(&p, "a", "v1");
    }
    let report = load.finish();
    eprintln!("killed at each step: {}", summary(&report));
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}

#[test]
fn killed_after_recording_before_the_flip_status_names_the_switch_and_any_run_fixes_it() {
    let (p, v2) = Project::live_v1_with_v2("");
    let r = p.zdd_env(&["deploy", &v2], &[("ZDD_TEST_FAULT", "recorded:KILL")]);
    assert_eq!(r.code, -1, "{r:?}");
    assert_eq!(p.switch(), "a", "killed before the flip");
    assert_eq!(p.served(), "v1", "nginx still picks the old slot");
    let s = p.status_json();
    let drift = s["drift"].to_string();
    assert!(
        drift.contains("switch points at slot a, not at the live slot b"),
        "{s}"
    );
    // Even a no-op (the tip is already recorded live) converges.
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("pointing it at slot b"), "{r:?}");
    assert!(r.stderr.contains("still runs; stopping it"), "{r:?}");
    assert_converged(&p, "b", "v2");
}

#[test]
fn sigint_before_the_flip_backs_out() {
    let (p, v2) = Project::live_v1_with_v2("");
    let r = p.zdd_env(&["deploy", &v2], &[("ZDD_TEST_FAULT", "recorded:INT")]);
    assert_eq!(r.code, 128 + 2, "{r:?}");
    assert!(r.stderr.contains("interrupted by SIGINT"), "{r:?}");
    assert!(r.stderr.contains("slot a still serves"), "{r:?}");
    assert_converged(&p, "a", "v1");
    let state = p.state();
    assert_eq!(state["next_deploy"].as_str(), Some("b"));
    assert!(state["slots"]["b"].get("process").is_none());
    let h = p.zdd(&["history", "--json"]);
    assert!(h.stdout.contains("\"outcome\": \"interrupted\""), "{h:?}");
}

#[test]
fn sigint_after_the_flip_finishes_the_swap() {
    let (p, v2) = Project::live_v1_with_v2("");
    let r = p.zdd_env(&["deploy", &v2], &[("ZDD_TEST_FAULT", "flipped:INT")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("got SIGINT during the swap; finished it first"),
        "{r:?}"
    );
    assert_converged(&p, "b", "v2");
}

/// What nginx answers when a deploy could not steer it: the old slot
/// serves, the switch points back at it, the new slot is stopped.
fn assert_backed_out(p: &Project, r: &Run) {
    eprintln!("{}", r.stderr);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("slot a still serves"), "{r:?}");
    assert_eq!(p.switch(), "a", "flipped back");
    assert_eq!(p.listening_slots(), ["a"], "the new slot was stopped");
    assert_eq!(p.served(), "v1");
    let state = p.state();
    assert_eq!(state["active"].as_str(), Some("a"));
    assert_eq!(state["next_deploy"].as_str(), Some("b"));
    assert_eq!(state["slots"]["a"]["status"].as_str(), Some("live"));
    assert_eq!(state["slots"]["b"]["status"].as_str(), Some("failed"));
}

#[test]
fn nginx_worker_that_cannot_see_the_switch_keeps_the_old_slot() {
    if !is_root() {
        eprintln!("NOT RUN: needs root, so that nginx's workers run as another user (nobody)");
        return;
    }
    let _heavy = heavy();
    let (p, v2) = Project::live_v1_with_v2("");
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nroute_timeout = \"1s\"\n"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let load = Load::start(&p, &["v1"]);
    let r = p.zdd(&["deploy", &v2]);
    let report = load.finish();
    assert!(
        r.stderr
            .contains(&format!("cannot search {} (mode 0700)", p.path().display()))
            && r.stderr.contains("chmod o+x"),
        "{r:?}"
    );
    assert_backed_out(&p, &r);
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}

/// Restart nginx with a site of one's own whose root is slot a's folder
/// itself, not the switch, so that it never follows a flip.
fn start_nginx_pinned_to_slot_a(p: &mut Project) {
    let live = p.root().join("live/www").display().to_string();
    let pinned = p.root().join("route/a/www").display().to_string();
    let site = p.zdd(&["nginx"]).stdout.replace(&live, &pinned);
    // What `nginx::mode` looks for in a template of one's own.
    let site = site.replace("# The switch:", &format!("# The switch: {live}"));
    let template = p.path().join("cached.conf.j2");
    std::fs::write(&template, &site).unwrap();
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            &format!(
                "[nginx]\nroute_timeout = \"1s\"\ntemplate = {:?}\n",
                template.display().to_string()
            ),
        )
    });
    p.start_nginx_workers(1);
}

#[test]
fn an_nginx_that_does_not_follow_the_switch_is_named() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    start_nginx_pinned_to_slot_a(&mut p);
    assert_eq!(p.served(), "v1");
    let r = p.zdd(&["deploy", &v2]);
    assert!(
        r.stderr.contains("after the switch was flipped to slot b, nginx did not follow it for 1s (it still resolves ")
            && r.stderr.contains("/route/a/www"),
        "{r:?}"
    );
    assert_backed_out(&p, &r);
}

/// nginx's caches of files and their metadata, at their most eager, do not
/// hide a flip: the real path is resolved anew for every connection.
#[test]
fn open_file_cache_does_not_hide_a_flip() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    let site = p.zdd(&["nginx"]).stdout.replace(
        "open_file_cache off;",
        "open_file_cache max=100 inactive=60s; open_file_cache_valid 60s; open_file_cache_errors on;",
    );
    p.start_nginx_with(&site);
    for _ in 0..5 {
        assert_eq!(p.served(), "v1");
    }
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
}

#[test]
fn killed_while_backing_out_converges_to_the_old_slot() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    start_nginx_pinned_to_slot_a(&mut p);
    assert_eq!(p.served(), "v1");
    let load = Load::start(&p, &["v1"]);
    let r = p.zdd_env(&["deploy", &v2], &[("ZDD_TEST_FAULT", "backing-out:KILL")]);
    assert_eq!(r.code, -1, "killed while backing out: {r:?}");
    assert_eq!(p.switch(), "b", "killed before the switch was pointed back");
    assert_eq!(
        p.state()["active"].as_str(),
        Some("a"),
        "the state was put back first"
    );
    // Any next run finishes the back-out: the switch back at a, b stopped.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 2, "nothing to roll back to: {r:?}");
    assert!(r.stderr.contains("pointing it at slot a"), "{r:?}");
    assert!(r.stderr.contains("still runs; stopping it"), "{r:?}");
    let report = load.finish();
    assert_converged(&p, "a", "v1");
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}

#[test]
fn nginx_config_without_the_switch_is_refused_at_the_probe() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    // nginx still runs a config from before the switch (round-robin).
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nmode = \"round-robin\"\n"));
    let old_site = p.zdd(&["nginx"]).stdout;
    p.edit_config(|c| c.replace("mode = \"round-robin\"", "mode = \"switch\""));
    p.start_nginx_with(&old_site);
    let r = p.zdd(&["deploy", &v2]);
    assert!(r.stderr.contains("without the X-Zdd-Mode header"), "{r:?}");
    assert!(r.stderr.contains("zdd nginx --write --reload"), "{r:?}");
    assert_backed_out(&p, &r);
}

/// The site an earlier zdd rendered for this project: two upstreams, and a
/// switch file tested when a request's head arrives.
fn site_of_an_earlier_zdd(p: &Project) -> String {
    let [a, b] = p.ports;
    let switch = p.root().join("switch/b");
    format!(
        "upstream testapp_a {{ zone testapp_a 64k; server 127.0.0.1:{a} max_fails=0; server 127.0.0.1:{b} backup max_fails=1 fail_timeout=1s; }}\n\
         upstream testapp_b {{ zone testapp_b 64k; server 127.0.0.1:{b} max_fails=0; server 127.0.0.1:{a} backup max_fails=1 fail_timeout=1s; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    set $zdd_testapp testapp_a;\n    if (-f \"{switch}\") {{ set $zdd_testapp testapp_b; }}\n    open_file_cache off;\n\
         location = /.zdd/upstream {{ allow 127.0.0.1; deny all; proxy_pass http://$zdd_testapp/; add_header X-Zdd-Upstream $upstream_addr always; add_header X-Zdd-Switch $zdd_testapp always; }}\n\
         location / {{ proxy_pass http://$zdd_testapp; proxy_next_upstream error timeout; proxy_set_header Host $host; }}\n}}\n",
        port = p.nginx_port,
        switch = switch.display()
    )
}

#[test]
fn a_site_rendered_by_an_earlier_zdd_keeps_working_until_it_is_rendered_again() {
    use std::os::unix::fs::PermissionsExt;
    let _heavy = heavy();
    let mut p = Project::new("");
    // What an earlier zdd left: its switch folder, pointing at slot a.
    let old_switch = p.root().join("switch");
    std::fs::create_dir_all(&old_switch).unwrap();
    std::fs::set_permissions(&old_switch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(old_switch.join("a"), "").unwrap();
    p.start_nginx_with(&site_of_an_earlier_zdd(&p));
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.served(), "v1");
    let v2 = p.commit("v2", "");
    let load = Load::start(&p, &["v1", "v2"]);
    // Uploads shorter than the settle zdd keeps for such a site (1 s).
    let slow = Load::start_slow_uploads(&p, &["v1", "v2"], "50ms..800ms");
    for i in 0..4 {
        let (r, want) = p.swap(i, &v2);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stderr.contains("a site rendered by an earlier zdd")
                && r.stderr.contains("run `zdd nginx --write --reload`"),
            "{r:?}"
        );
        let settle_ms: u64 = r
            .stdout
            .split(", settle ")
            .nth(1)
            .and_then(|rest| rest.split("ms").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no settle in the summary: {r:?}"));
        assert!(settle_ms >= 1000, "the earlier settle, at least 1 s: {r:?}");
        assert_eq!(p.served(), want, "after swap {i}");
        let slot = p.switch();
        assert!(old_switch.join(slot).exists(), "its file names slot {slot}");
    }
    let (report, slow) = (load.finish(), slow.finish());
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    assert_eq!(slow["failed"], 0, "{}", summary(&slow));
    assert!(slow["requests"].as_u64().unwrap() > 4, "{}", summary(&slow));
    // Rendered again: the switch picks the slot when nginx connects.
    p.start_nginx_workers(2);
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("earlier zdd"), "{r:?}");
    assert_eq!(p.served(), "v2");
}

/// Static files served by nginx through the switch flip with the code: one
/// rename changes both.
#[test]
fn static_files_through_the_switch_flip_with_the_code() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    let app = p.root().join("live/app");
    let site = p.zdd(&["nginx"]).stdout.replacen(
        "    location / {",
        &format!(
            "    location = /VERSION {{ root {}; }}\n    location / {{",
            app.display()
        ),
        1,
    );
    p.start_nginx_with(&site);
    let version_file = || http("GET", p.nginx_port, "/VERSION", "").unwrap();
    assert_eq!(version_file().2.trim(), "v1");
    assert_eq!(p.zdd(&["deploy", &v2]).code, 0);
    assert_eq!((version_file().2.trim(), p.served().as_str()), ("v2", "v2"));
    assert_eq!(p.zdd(&["rollback"]).code, 0);
    assert_eq!((version_file().2.trim(), p.served().as_str()), ("v1", "v1"));
}

/// A second app whose config shares the first one's listen and has no site
/// of its own in nginx: its first deploy reaches the other app's server
/// block. That is not a success, and the message says whose block it was.
#[test]
fn a_first_deploy_that_reaches_another_apps_server_block_fails() {
    let _heavy = heavy();
    let shop = Project::live_v1("");
    let typo = Project::new("");
    typo.edit_config(|c| c.replace(&typo.nginx_port.to_string(), &shop.nginx_port.to_string()));
    let r = typo.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("was answered by a server block of another root: it resolved ")
            && r.stderr
                .contains(&format!("{}/route/a/www", shop.root().display())),
        "{r:?}"
    );
    assert!(
        typo.listening_slots().is_empty(),
        "its new slot was stopped"
    );
    assert!(
        typo.state().get("active").is_none(),
        "nothing recorded live"
    );
    assert_eq!(shop.served(), "v1");
}
