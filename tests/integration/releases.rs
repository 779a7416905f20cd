//! Releases (issue 19): each commit checked out and built once in
//! `releases/SHA`; a failed deploy never costs the rollback target;
//! rollback steps back through the kept ones; a kept commit deploys
//! without a build; `releases.keep` prunes the rest; an earlier zdd's
//! slot trees are adopted.

use crate::support::*;
use std::time::Duration;

fn releases_json(p: &Project) -> Vec<serde_json::Value> {
    let r = p.zdd(&["releases", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Each release's commit and status, newest first.
fn statuses(p: &Project) -> Vec<(String, String)> {
    releases_json(p)
        .iter()
        .map(|r| {
            (
                r["commit"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn on_disk(p: &Project) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(p.root().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Turn `p`'s root into the layout an earlier zdd left: v1's and v2's
/// releases as the slots' own work trees (`slots/a`, `slots/b`, each with
/// `git/X`), the links into them, and no releases in the state.
fn as_an_earlier_zdd_left_it(p: &Project, v1: &str, v2: &str) {
    let root = p.root();
    std::fs::create_dir_all(root.join("slots")).unwrap();
    for (slot, sha) in [("a", v1), ("b", v2)] {
        std::fs::rename(
            root.join(format!("releases/{sha}")),
            root.join(format!("slots/{slot}")),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(format!("git/{slot}"))).unwrap();
        std::fs::write(root.join(format!("git/{slot}/HEAD")), format!("{sha}\n")).unwrap();
        let app = root.join(format!("route/{slot}/app"));
        std::fs::remove_file(&app).unwrap();
        std::os::unix::fs::symlink(format!("../../slots/{slot}"), &app).unwrap();
    }
    let state = std::fs::read_to_string(root.join("state.toml")).unwrap();
    let without = state.split("[[releases]]").next().unwrap();
    std::fs::write(root.join("state.toml"), without).unwrap();
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_failed_deploy_never_costs_the_rollback_target_and_rollback_steps_back() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| c.replace("timeout = \"15s\"", "timeout = \"2s\""));
    p.go_live();
    let v1 = p.commit_of("a");
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let v3 = p.commit("v3", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.served(), "v3");
    // A broken commit: its deploy fails, v3 serves, and its release goes.
    let broken = p.commit("v4", "export APP_STATUS=500");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(p.served(), "v3");
    assert_eq!(
        on_disk(&p),
        sorted(vec![v1.clone(), v2.clone(), v3.clone()])
    );
    assert!(!p.root().join(format!("git/index/{broken}")).exists());
    assert_eq!(
        statuses(&p),
        [
            (v3.clone(), "live".to_string()),
            (v2.clone(), "kept".to_string()),
            (v1.clone(), "kept".to_string())
        ]
    );
    assert_eq!(releases_json(&p)[1]["rollback"], true, "v2 comes back");
    let text = p.zdd(&["releases"]);
    assert!(
        text.stdout.contains(&format!("  {}  kept", &v2[..12]))
            && text.stdout.contains("<- `zdd rollback` brings it back"),
        "{text:?}"
    );

    // Rollback brings back v2, although the broken deploy used its slot.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
    // Again: a step further back, to v1 (rollbacks reorder nothing).
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("nothing to roll back to: no good release is older than the live one"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v1");
    // Cron leaves the tip alone after a rollback, as before.
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(p.served(), "v1");

    // Any kept release by name, without a build; not a failed one.
    let r = p.zdd(&["rollback", &v3[..10]]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v3");
    let r = p.zdd(&["rollback", &broken]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "zdd: cannot roll back to {broken}: {} is not a kept release that went live; the kept releases to roll back to, newest first: {}, {} (`zdd releases` lists them; `zdd deploy {broken}` builds it)",
            &broken[..12],
            &v2[..12],
            &v1[..12]
        )
    );
    assert_eq!(p.served(), "v3");
    p.kill_everything();
}

#[test]
fn a_kept_release_deploys_without_a_checkout_or_a_build() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.go_live();
    let v1 = p.commit_of("a");
    p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let builds = |p: &Project| {
        ["a", "b"]
            .iter()
            .map(|s| {
                std::fs::read_to_string(p.root().join(format!("logs/{s}.log"))).unwrap_or_default()
            })
            .map(|log| log.matches(": build of ").count())
            .sum::<usize>()
    };
    let before = builds(&p);
    let r = p.zdd(&["deploy", &v1]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.trim_end().ends_with("; reused its kept release"),
        "{r:?}"
    );
    assert!(r.stdout.contains("build 0ms"), "{r:?}");
    assert_eq!(builds(&p), before, "no build ran");
    assert_eq!(p.served(), "v1");
    let last = p.history().last().unwrap().clone();
    assert_eq!(
        last["reason"],
        "reused its kept release: no checkout, no build"
    );
    // Deployed again, v1 is the newest: rollback goes to v2.
    assert_eq!(statuses(&p)[0], (v1.clone(), "live".to_string()));
    assert_eq!(p.zdd(&["rollback"]).code, 0);
    assert_eq!(p.served(), "v2");
    p.kill_everything();
}

#[test]
fn releases_keep_removes_the_oldest_good_releases_after_a_swap() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| format!("{c}\n[releases]\nkeep = 2\n"));
    p.go_live();
    let mut shas = vec![p.commit_of("a")];
    for v in ["v2", "v3", "v4"] {
        shas.push(p.commit(v, ""));
        let r = p.zdd(&["deploy"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    // The live v4 and the rollback target v3 stay.
    assert_eq!(on_disk(&p), sorted(vec![shas[2].clone(), shas[3].clone()]));
    assert_eq!(statuses(&p).len(), 2);
    assert_eq!(p.zdd(&["rollback"]).code, 0);
    assert_eq!(p.served(), "v3");
    let r = p.zdd(&["releases", "--json"]);
    assert_eq!(r.code, 0);

    // A bad keep is a config error naming its place.
    p.edit_config(|c| c.replace("keep = 2", "keep = 0"));
    let r = p.zdd(&["releases"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("releases.keep = 0 is out of bounds: keep 2 to 100 good releases"),
        "{r:?}"
    );
    p.kill_everything();
}

/// A root as an earlier zdd left it: each slot a work tree of its own
/// (`slots/X`, with `git/X`), no releases in the state.
#[test]
fn an_earlier_zdds_slot_trees_are_adopted_as_releases() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.go_live();
    let v1 = p.commit_of("a");
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    p.kill_everything();
    let root = p.root();
    as_an_earlier_zdd_left_it(&p, &v1, &v2);

    // `zdd up` adopts both: the live one moves (nothing runs from it yet).
    let r = p.zdd(&["up"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
    assert!(
        root.join(format!("releases/{v2}/VERSION")).is_file(),
        "{r:?}"
    );
    assert!(
        root.join(format!("releases/{v1}/VERSION")).is_file(),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_link(root.join("route/b/app")).unwrap(),
        std::path::PathBuf::from(format!("../../releases/{v2}"))
    );
    // What a zdd killed mid-checkout leaves, no record naming it.
    let orphan = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(root.join(format!("releases/{orphan}/node_modules"))).unwrap();
    std::fs::create_dir_all(root.join(format!("git/index/{orphan}"))).unwrap();
    // Its rollback target is the adopted v1.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
    // After a swap, what an earlier zdd left is gone, and the orphans.
    assert!(!root.join("slots").exists() && !root.join("git/a").exists());
    assert!(!root.join(format!("releases/{orphan}")).exists());
    assert!(!root.join(format!("git/index/{orphan}")).exists());
    assert_eq!(on_disk(&p), sorted(vec![v1.clone(), v2.clone()]));
    p.kill_everything();
}

#[test]
fn restart_starts_the_live_release_with_the_config_as_it_is_now() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.go_live();
    let v1 = p.commit_of("a");
    p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let r = p.zdd(&["restart"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("restarted "), "{r:?}");
    assert_eq!(p.listening_slots(), ["a"], "on the idle slot");
    // A changed [env] reaches the app with no downtime.
    p.edit_config(|c| c.replace("[env]\n", "[env]\nAPP_VERSION = \"v2-restarted\"\n"));
    let r = p.zdd(&["restart"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2-restarted");
    assert_eq!(p.listening_slots(), ["b"]);
    // Both slots hold v2 now; the live one says so.
    let v2 = p.commit_of("b");
    assert_eq!(statuses(&p)[0], (v2, "live".to_string()));
    assert_eq!(releases_json(&p)[0]["slot"], "b");
    // The rollback target is what it was.
    assert_eq!(p.status_json()["rollback_to"], v1.as_str());
    let last = p.history().last().unwrap().clone();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("restart"), Some("ok"))
    );

    // A restart that does not come up keeps the live one serving (exit 1).
    p.edit_config(|c| {
        c.replace("APP_VERSION = \"v2-restarted\"\n", "APP_STATUS = \"500\"\n")
            .replace("timeout = \"15s\"", "timeout = \"1s\"")
    });
    let r = p.zdd(&["restart"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("restart of ") && r.stderr.contains("failed: not healthy"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v2-restarted");
    assert_eq!(p.status_json()["rollback_to"], v1.as_str());
    p.kill_everything();

    let fresh = Project::new("");
    let r = fresh.zdd(&["restart"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("nothing is deployed yet; nothing to restart"),
        "{r:?}"
    );
}

#[test]
fn shared_paths_outlive_releases_and_belong_to_the_app_user() {
    let _heavy = heavy();
    assert!(
        is_root(),
        "this test runs the app as nobody: run the suite as root"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut p = Project::new("user = \"nobody\"\nshared = [\"uploads/\", \"config/.env\"]");
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    p.go_live();
    let root = std::fs::canonicalize(p.root()).unwrap();
    let v1 = p.release_of("a");
    assert_eq!(
        std::fs::read_link(v1.join("uploads")).unwrap(),
        root.join("shared/uploads")
    );
    assert_eq!(
        std::fs::read_link(v1.join("config/.env")).unwrap(),
        root.join("shared/config/.env")
    );
    for (path, uid) in [
        ("shared", 0),
        ("shared/config", 0),
        ("shared/uploads", 65534),
        ("shared/config/.env", 65534),
    ] {
        assert_eq!(
            std::fs::symlink_metadata(root.join(path)).unwrap().uid(),
            uid,
            "{path}"
        );
    }
    std::fs::write(root.join("shared/uploads/photo.jpg"), "jpeg").unwrap();
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    assert_eq!(
        std::fs::read_to_string(p.release_of("b").join("uploads/photo.jpg")).unwrap(),
        "jpeg",
        "the new release sees what the old one wrote"
    );

    // A commit that tracks a shared path fails, naming it; v2 serves on.
    std::fs::create_dir_all(p.repo().join("config")).unwrap();
    std::fs::write(p.repo().join("config/.env"), "SECRET=committed\n").unwrap();
    let bad = p.commit("v3", "");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "failed: the commit has config/.env, which `shared` in {} names: remove it from the repository",
            p.config_path().display()
        )),
        "{r:?}"
    );
    assert!(
        !root.join(format!("releases/{bad}")).exists(),
        "its release is gone"
    );
    assert_eq!(p.served(), "v2");
    assert_eq!(
        p.release_of("a").file_name().unwrap().to_str().unwrap(),
        bad
    );
    let _ = v2;
    p.kill_everything();
}

/// The upgrade in place under load: the live app runs from `slots/b` of an
/// earlier zdd while the next deploy swaps away from it; it is moved to
/// `releases/` only once stopped. Nothing is lost, nothing rebuilt.
#[test]
fn an_earlier_zdds_running_slot_is_upgraded_under_load_without_a_lost_request() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.go_live();
    let v1 = p.commit_of("a");
    let v2 = p.commit("v2", "");
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let root = p.root();
    // Turn the layout into an earlier zdd's while v2 runs in slot b.
    as_an_earlier_zdd_left_it(&p, &v1, &v2);

    let load = Load::start(&p, &["v1", "v2", "v3"]);
    p.commit("v3", "");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        root.join("slots/b").is_dir(),
        "v2 ran from there during the swap"
    );
    // The next run moves what nothing runs from any more; rollback needs no build.
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
    let report = load.finish();
    eprintln!("upgrade in place: {}", summary(&report));
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    assert!(!root.join("slots").exists(), "moved and removed");
    assert_eq!(p.release_of("b"), root.join(format!("releases/{v2}")));
    p.kill_everything();
}

#[test]
fn an_env_file_reaches_the_app_at_each_start_and_a_bad_line_is_named() {
    let _heavy = heavy();
    let mut p = Project::new("env_file = \"shop.env\"");
    let env_file = p.path().join("shop.env");
    std::fs::write(
        &env_file,
        "# from the env file\nAPP_VERSION=\"from-the-file\"\n",
    )
    .unwrap();
    p.start_nginx();
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "from-the-file");
    std::fs::write(&env_file, "APP_VERSION=changed\n").unwrap();
    let r = p.zdd(&["restart"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "changed");
    // A keeper's restart of a crashed app reads the file again; one it
    // cannot read then leaves the values of the last start.
    let live = p.state()["active"].as_str().unwrap().to_string();
    let crash = |p: &Project| {
        let pid = p.keeper_status(&live).unwrap()["app_pid"]
            .as_integer()
            .unwrap();
        kill(pid as i32, nix::sys::signal::Signal::SIGKILL);
        assert!(
            wait_until(Duration::from_secs(20), || p
                .keeper_status(&live)
                .and_then(|k| k.get("app_pid")?.as_integer())
                .is_some_and(|now| now != pid)),
            "restarted by its keeper"
        );
    };
    std::fs::write(&env_file, "APP_VERSION=after-a-crash\n").unwrap();
    crash(&p);
    assert!(wait_until(Duration::from_secs(10), || p.served() == "after-a-crash"));
    std::fs::write(&env_file, "not a line\n").unwrap();
    crash(&p);
    assert!(wait_until(Duration::from_secs(10), || p.served() == "after-a-crash"));
    let log = std::fs::read_to_string(p.root().join(format!("logs/{live}.log"))).unwrap();
    assert!(
        log.contains("not a NAME=value line")
            && log.contains("the app starts with the env file as it was at its last start"),
        "{log}"
    );
    std::fs::write(&env_file, "APP_VERSION=changed\n").unwrap();
    // [env] wins over it.
    p.edit_config(|c| c.replace("[env]\n", "[env]\nAPP_VERSION = \"from-env\"\n"));
    assert_eq!(p.zdd(&["restart"]).code, 0);
    assert_eq!(p.served(), "from-env");
    // A bad line: exit 2, file:line, nothing changed.
    std::fs::write(&env_file, "A=1\nnot a line\n").unwrap();
    let before = p.state_bytes();
    let r = p.zdd(&["restart"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "zdd: {}:2: not a NAME=value line",
            env_file.display()
        )),
        "{r:?}"
    );
    assert_eq!(p.state_bytes(), before);
    assert_eq!(p.served(), "from-env");
    // Broken after zdd checked it and before the app's first start (here
    // by the before_start hook): that start fails as an error of the
    // environment, named, not the commit's (cron tries it again).
    std::fs::write(&env_file, "APP_VERSION=changed\n").unwrap();
    let hook = format!(
        "\n[hooks]\nbefore_start = \"echo not a line >> {}\"\n",
        env_file.display()
    );
    p.edit_config(|c| c + &hook);
    let sha = p.commit("v2", "");
    let r = p.zdd(&["deploy", &sha]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "its keeper could not start the app: {}:2: not a NAME=value line",
            env_file.display()
        )),
        "{r:?}"
    );
    assert_eq!(p.served(), "from-env");
    let last = p.history().last().cloned().unwrap();
    assert_eq!(last["outcome"], "error", "{last}");
    p.kill_everything();
}

/// zdd killed at each new step — the checkout into a release, the shared
/// links, the release's record, a restart's swap, pruning — under load:
/// nothing lost, and the next run converges.
#[test]
fn zdd_killed_at_each_new_step_converges_without_losing_a_request() {
    let _heavy = heavy();
    let mut p = Project::new("shared = [\"uploads/\"]\n[releases]\nkeep = 2");
    p.go_live();
    let v1 = p.commit_of("a");
    let load = Load::start(&p, &["v1", "v2", "v3", "v4", "v5", "v6"]);
    // A new commit each time: a kept release would need no checkout.
    for (step, version) in [("checked-out", "v2"), ("linked", "v3"), ("built", "v4")] {
        let sha = p.commit(version, "");
        let fault = format!("{step}:KILL");
        let r = p.zdd_env(&["deploy", &sha], &[("ZDD_TEST_FAULT", &fault)]);
        assert_eq!(r.code, -1, "killed at {step}: {r:?}");
        assert_eq!(p.served(), "v1", "{step}");
        let r = p.zdd(&["deploy", &sha]);
        assert_eq!(r.code, 0, "after a kill at {step}: {r:?}");
        assert_eq!(p.served(), version, "{step}");
        assert!(p.release_of("b").join("uploads").is_symlink(), "{step}");
        // Back to v1 by name (a plain rollback goes one release back).
        let r = p.zdd(&["rollback", &v1]);
        assert_eq!(r.code, 0, "{step}: {r:?}");
        assert_eq!(p.served(), "v1", "{step}");
    }
    for step in ["recorded", "flipped", "confirmed", "stopping"] {
        let fault = format!("{step}:KILL");
        let r = p.zdd_env(&["restart"], &[("ZDD_TEST_FAULT", &fault)]);
        assert_eq!(r.code, -1, "restart killed at {step}: {r:?}");
        assert_eq!(p.served(), "v1", "{step}");
        let r = p.zdd(&["restart"]);
        assert_eq!(r.code, 0, "after a restart killed at {step}: {r:?}");
        assert_eq!(p.served(), "v1", "{step}");
        assert_eq!(p.listening_slots().len(), 1, "{step}");
    }
    // Killed while pruning (keep = 2: only the live release and the target).
    let v5 = p.commit("v5", "");
    assert_eq!(p.zdd(&["deploy", &v5]).code, 0);
    let v6 = p.commit("v6", "");
    let r = p.zdd_env(&["deploy", &v6], &[("ZDD_TEST_FAULT", "pruning:KILL")]);
    assert_eq!(r.code, -1, "{r:?}");
    assert_eq!(p.served(), "v6", "the swap was done before pruning");
    for (sha, _) in statuses(&p) {
        assert!(
            p.root().join(format!("releases/{sha}")).is_dir(),
            "{sha} listed and there"
        );
    }
    // The next swap finishes the job: two releases, nothing else.
    assert_eq!(p.zdd(&["rollback"]).code, 0);
    assert_eq!(p.served(), "v5");
    assert_eq!(on_disk(&p), sorted(vec![v5.clone(), v6.clone()]));
    let report = load.finish();
    eprintln!("killed at each new step: {}", summary(&report));
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    p.kill_everything();
}

#[test]
fn a_cache_starts_the_next_build_warm_from_a_copy() {
    let _heavy = heavy();
    let build = "if [ -f target/marker ]; then echo \"warm build from $(cat target/marker)\"; else echo cold build; fi\nmkdir -p target && echo $ZDD_COMMIT > target/marker\n";
    let mut p = Project::new("cache = [\"target/\"]");
    let v1 = p.commit_with("v1", "", build);
    p.go_live();
    let log_a = last_attempt_log(&p).unwrap();
    assert!(log_a.contains("cold build"), "{log_a}");
    let v2 = p.commit_with("v2", "", build);
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("copied 1 cache path(s) from releases/"),
        "{r:?}"
    );
    let log_b = last_attempt_log(&p).unwrap();
    assert!(log_b.contains(&format!("warm build from {v1}")), "{log_b}");
    // A copy: each release has its own.
    use std::os::unix::fs::MetadataExt;
    let inode = |sha: &str| {
        std::fs::metadata(p.root().join(format!("releases/{sha}/target/marker")))
            .unwrap()
            .ino()
    };
    assert_ne!(inode(&v1), inode(&v2));
    assert_eq!(
        std::fs::read_to_string(p.root().join(format!("releases/{v1}/target/marker"))).unwrap(),
        format!("{v1}\n"),
        "the old release's cache is untouched"
    );
    p.kill_everything();
}
