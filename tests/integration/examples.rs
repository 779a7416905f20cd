//! The node and python example apps honour the app contract: each goes
//! through real deploys and a rollback under load behind nginx.

use crate::support::*;

/// The interpreter must be there: scripts/test.sh installs it.
fn require(name: &str) {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{name}` is not installed, so its example app cannot be deployed: run scripts/test.sh, which installs it"
    );
}

/// Deploy v1, deploy v2, roll back, with load on; returns the load report.
/// `source` is below examples/.
fn deploy_example(source: &str, file: &str, start: &str) -> serde_json::Value {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.use_app(&[(file, source)], start, "");
    p.go_live();
    let v2 = p.commit("v2", "");

    let load = Load::start(&p, &["v1", "v2"]);
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
    require("python3");
    let report = deploy_example("python/app.py", "app.py", "python3 app.py");
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}

#[test]
fn node_example_deploys_without_losing_a_request() {
    require("node");
    let report = deploy_example("node/server.js", "server.js", "node server.js");
    assert_eq!(report["failed"], 0, "{}", summary(&report));
}
