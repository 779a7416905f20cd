//! The promise with the app servers people actually run, unmodified and
//! installed from the package registries: gunicorn (sync and gthread
//! workers) and uvicorn serving plain Flask and Starlette apps, express 4
//! stopping the way its docs show, and the reference app closing its
//! listener without draining its queue. Each goes through 6 deploys and
//! rollbacks under GET and POST load, client keep-alive on and off, and
//! every request must get its expected answer.

use crate::support::*;

/// Deploy v1, then swap between v2 and v1 `swaps` times under load, with
/// slow uploads beside it; returns the two load reports.
fn swaps_under_load(p: &mut Project, swaps: usize) -> Reports {
    p.go_live();
    let v2 = p.commit("v2", "");

    let load = Load::start(p, &["v1", "v2"]);
    // Bodies 50 ms to 2 s after their heads: some connect while the old
    // server is shutting down, whatever the settle.
    let slow = Load::start_slow_uploads(p, &["v1", "v2"], "50ms..2s");
    for i in 0..swaps {
        let (r, want) = p.swap(i, &v2);
        if r.code != 0 {
            let report = load.finish();
            panic!("swap {i} failed: {r:?}\nload: {}", summary(&report));
        }
        assert_eq!(p.served(), want, "after swap {i}");
        assert_eq!(p.listening_slots().len(), 1, "after swap {i}");
    }
    Reports {
        load: load.finish(),
        slow: slow.finish(),
    }
}

/// 6 swaps, or `ZDD_TEST_SWAPS` for a measurement (see the README).
fn swaps() -> usize {
    std::env::var("ZDD_TEST_SWAPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
}

/// The main load's report and the slow uploads'.
struct Reports {
    load: serde_json::Value,
    slow: serde_json::Value,
}

fn assert_nothing_lost(p: &Project, what: &str, reports: &Reports) {
    let (report, slow) = (&reports.load, &reports.slow);
    eprintln!("{what}: {}", summary(report));
    eprintln!("{what}, slow uploads: {}", summary(slow));
    assert_eq!(
        slow["failed"],
        0,
        "{what}, slow uploads: {}\nnginx error log:\n{}",
        summary(slow),
        p.nginx.as_ref().unwrap().error_log()
    );
    assert!(
        slow["requests"].as_u64().unwrap() > 10,
        "{what}: {}",
        summary(slow)
    );
    assert_eq!(
        report["failed"],
        0,
        "{what}: {}\nnginx error log:\n{}",
        summary(report),
        p.nginx.as_ref().unwrap().error_log()
    );
    for method in ["GET", "POST"] {
        assert!(
            report["by_method"][method]["requests"].as_u64().unwrap() > 200,
            "{what}: too little {method} load to prove anything: {}",
            summary(report)
        );
    }
    for version in ["v1", "v2"] {
        assert!(
            report["versions"][version].as_u64().unwrap_or(0) > 0,
            "{what}: {version} never served: {}",
            summary(report)
        );
    }
}

fn gunicorn(workers: &str) {
    let _heavy = heavy();
    let venv = app_servers().join("venv/bin");
    let mut p = Project::new("");
    let start = format!(
        "{}/gunicorn {workers} --bind 127.0.0.1:$PORT app:app",
        venv.display()
    );
    p.use_app(&[("app.py", "servers/flask/app.py")], &start, "");
    let report = swaps_under_load(&mut p, swaps());
    assert_nothing_lost(&p, &format!("gunicorn {workers}"), &report);
}

#[test]
fn gunicorn_sync_workers_lose_no_request() {
    gunicorn("--workers 2");
}

#[test]
fn gunicorn_gthread_workers_lose_no_request() {
    gunicorn("--worker-class gthread --threads 4");
}

/// A plain Starlette app served by uvicorn.
fn uvicorn_project() -> Project {
    let venv = app_servers().join("venv/bin");
    let p = Project::new("");
    let start = format!(
        "{}/uvicorn --host 127.0.0.1 --port $PORT app:app",
        venv.display()
    );
    p.use_app(&[("app.py", "servers/starlette/app.py")], &start, "");
    p
}

#[test]
fn uvicorn_loses_no_request() {
    let _heavy = heavy();
    let mut p = uvicorn_project();
    let report = swaps_under_load(&mut p, swaps());
    assert_nothing_lost(&p, "uvicorn", &report);
}

/// `zdd restart` of a real server under GET and POST load, slow uploads
/// beside it: every request answered.
#[test]
fn uvicorn_restarts_lose_no_request() {
    let _heavy = heavy();
    let mut p = uvicorn_project();
    p.go_live();
    let load = Load::start(&p, &["v1"]);
    let slow = Load::start_slow_uploads(&p, &["v1"], "50ms..2s");
    let mut slots = Vec::new();
    for i in 0..4 {
        let r = p.zdd(&["restart"]);
        assert_eq!(r.code, 0, "restart {i}: {r:?}");
        slots.push(p.listening_slots());
    }
    let reports = Reports {
        load: load.finish(),
        slow: slow.finish(),
    };
    assert_eq!(slots, [["b"], ["a"], ["b"], ["a"]], "each restart swaps");
    for (what, report) in [("load", &reports.load), ("slow uploads", &reports.slow)] {
        eprintln!("uvicorn restarts, {what}: {}", summary(report));
        assert_eq!(report["failed"], 0, "{what}: {}", summary(report));
    }
    assert!(
        reports.load["by_method"]["POST"]["requests"]
            .as_u64()
            .unwrap()
            > 200,
        "{}",
        summary(&reports.load)
    );
}

#[test]
fn express_loses_no_request() {
    let _heavy = heavy();
    let modules = app_servers().join("node_modules");
    let mut p = Project::new("");
    p.use_app(
        &[("server.js", "servers/express/server.js")],
        "node server.js",
        &format!("NODE_PATH = {:?}\n", modules.display().to_string()),
    );
    let report = swaps_under_load(&mut p, swaps());
    assert_nothing_lost(&p, "express", &report);
}

#[test]
fn reference_app_closing_without_draining_its_queue_loses_no_request() {
    let _heavy = heavy();
    let mut p = Project::new("");
    // In [env], for every release: the rollbacks stop a naive v2 too.
    p.edit_config(|c| c.replace("[env]\n", "[env]\nAPP_STOP = \"naive\"\n"));
    let report = swaps_under_load(&mut p, swaps());
    assert_nothing_lost(&p, "reference app, naive stop", &report);
}
