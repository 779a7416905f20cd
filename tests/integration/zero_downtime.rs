//! The promise: no request lost across deploys and rollbacks under load,
//! GET and POST, client keep-alive on and off, through a real nginx.

use crate::support::*;

#[test]
fn no_request_lost_across_ten_back_to_back_swaps() {
    let _heavy = heavy();
    let mut p = Project::new("");
    let v1 = p.git(&["rev-parse", "HEAD"]);
    p.start_nginx();
    let r = p.zdd(&["deploy", &v1]);
    assert_eq!(r.code, 0, "{r:?}");
    let v2 = p.commit("v2", "");

    let load = Load::start(&p, &["v1", "v2"]);
    let mut route_waits = Vec::new();
    for i in 0..10 {
        let (r, want) = p.swap(i, &v2);
        if r.code != 0 {
            let report = load.finish();
            panic!("swap {i} failed: {r:?}\nload: {}", summary(&report));
        }
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains("nginx routes to slot"))
            .unwrap_or("")
            .to_string();
        route_waits.push(line.rsplit(' ').next().unwrap_or("?").to_string());
        assert_eq!(p.served(), want, "after swap {i}");
        assert_eq!(
            p.listening_slots().len(),
            1,
            "after swap {i}: one slot listens at rest"
        );
    }
    let report = load.finish();
    eprintln!("zero downtime, 10 swaps: {}", summary(&report));
    eprintln!("nginx routing waits: {route_waits:?}");
    assert_eq!(
        report["failed"],
        0,
        "{}\nnginx error log:\n{}",
        summary(&report),
        p.nginx.as_ref().unwrap().error_log()
    );
    assert!(
        report["requests"].as_u64().unwrap() > 1000,
        "{}",
        summary(&report)
    );
    assert!(
        report["by_method"]["POST"]["requests"].as_u64().unwrap() > 300,
        "{}",
        summary(&report)
    );
    let versions = &report["versions"];
    assert!(
        versions["v1"].as_u64().unwrap() > 0 && versions["v2"].as_u64().unwrap() > 0,
        "{}",
        summary(&report)
    );

    let h = p.zdd(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let entries = h["history"].as_array().unwrap();
    assert_eq!(entries.len(), 11);
    assert!(entries.iter().all(|e| e["outcome"] == "ok"));
}

#[test]
fn round_robin_nginx_listing_one_slot_keeps_the_old_slot_serving() {
    let _heavy = heavy();
    let mut p = Project::new("");
    p.edit_config(|c| {
        c.replace(
            "[nginx]\n",
            "[nginx]\nmode = \"round-robin\"\nroute_timeout = \"2s\"\n",
        )
    });
    let site = p.zdd(&["nginx"]).stdout;
    assert!(site.contains("upstream testapp {"), "{site}");
    let only_a: String = site
        .lines()
        .filter(|l| !l.contains(&format!("127.0.0.1:{} ", p.ports[1])))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(only_a, site);
    p.start_nginx_with(&only_a);
    assert_eq!(p.zdd(&["deploy"]).code, 0);
    let v2 = p.commit("v2", "");

    let load = Load::start(&p, &["v1"]);
    let r = p.zdd(&["deploy", &v2]);
    let report = load.finish();
    eprintln!("one-slot nginx: {}", summary(&report));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nginx did not route to slot b"), "{r:?}");
    assert!(r.stderr.contains("slot a still serves"), "{r:?}");
    assert_eq!(p.served(), "v1");
    assert_eq!(
        p.listening_slots(),
        ["a"],
        "the new slot was stopped, the old one kept"
    );
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    let state = p.state();
    assert_eq!(state["active"].as_str(), Some("a"));
    assert_eq!(state["slots"]["b"]["status"].as_str(), Some("failed"));
}
