//! The node and python example apps honour the app contract: each goes
//! through real deploys and a rollback under load behind nginx.

use crate::support::*;

/// The interpreter must be there: scripts/test.sh installs it.
fn interpreter(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{name}` is not installed, so its example app cannot be deployed: run scripts/test.sh, which installs it"
    );
    found
}

/// Deploy v1, deploy v2, roll back, with load on; returns the load report.
fn deploy_example(source: &str, file: &str, start: &str, post_ratio: &str) -> serde_json::Value {
    let _heavy = heavy();
    let mut p = Project::new("");
    let code =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source))
            .unwrap();
    std::fs::write(p.repo().join(file), code).unwrap();
    p.commit("v1", "");
    p.edit_config(|c| c.replace("start = \"./run.sh\"", &format!("start = \"{start}\"")));
    p.start_nginx();
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
    let v2 = p.commit("v2", "");

    let load = Load::start_with(&p, &["v1", "v2"], post_ratio);
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
    assert_eq!(p.listening_slots(), ["b"]);
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
    assert_eq!(p.listening_slots(), ["a"]);
    let report = load.finish();
    eprintln!("{start}: {}", summary(&report));
    report
}

#[test]
fn python_example_deploys_without_losing_a_request() {
    if !interpreter("python3") {
        return;
    }
    let report = deploy_example("examples/python/app.py", "app.py", "python3 app.py", "0.5");
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}

#[test]
fn node_example_deploys_without_losing_a_request() {
    if !interpreter("node") {
        return;
    }
    let report = deploy_example(
        "examples/node/server.js",
        "server.js",
        "node server.js",
        "0.5",
    );
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}
