//! `zdd maintenance on|off`: nginx answers the public with zdd's page
//! through the switch, deploys go on behind it, and a config that cannot
//! show the page changes nothing.

use crate::support::*;

/// A public request through nginx: status, headers (lowercase), body.
fn public(p: &Project, method: &str) -> (u16, String, String) {
    let (status, head, body) = http(method, p.nginx_port, "/orders?id=1", "x=1").unwrap();
    (status, head.to_lowercase(), body)
}

#[test]
fn maintenance_closes_the_site_and_deploys_go_on_behind_it() {
    let _heavy = heavy();
    let (p, v2) = Project::live_v1_with_v2("");
    let r = p.zdd(&["maintenance", "off"]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "maintenance is not on; nothing to do"),
        "{r:?}"
    );

    let r = p.zdd(&[
        "maintenance",
        "on",
        "--message",
        "Moving <b>orders</b> & back by 9",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("maintenance on since "), "{r:?}");
    for method in ["GET", "POST"] {
        let (status, head, body) = public(&p, method);
        assert_eq!(status, 503, "{method}: {head}{body}");
        assert!(head.contains("retry-after: 120"), "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(
            body.contains("<p>Moving &lt;b&gt;orders&lt;&#x2f;b&gt; &amp; back by 9</p>"),
            "{body}"
        );
    }
    let s = p.status_json();
    assert_eq!(
        s["maintenance"]["message"], "Moving <b>orders</b> & back by 9",
        "{s}"
    );
    let text = p.zdd(&["status"]).stdout;
    assert!(text.contains("maintenance: on since "), "{text}");

    // A deploy behind the page: verified, flipped and confirmed through
    // zdd's probe, which still reaches the slots; the page stays.
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.switch(), "b");
    assert_eq!(public(&p, "GET").0, 503);
    assert_eq!(p.served_direct(1), "v2");
    // zdd up (after a reboot) keeps it too.
    assert_eq!(p.zdd(&["up"]).code, 0);
    assert_eq!(public(&p, "GET").0, 503);

    let r = p.zdd(&["maintenance", "off"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        "maintenance off: nginx sends requests to slot b again"
    );
    assert_eq!(p.served(), "v2");
    assert!(p.status_json()["maintenance"].is_null());
}

#[test]
fn a_config_that_cannot_show_the_page_changes_nothing() {
    let _heavy = heavy();
    let mut p = Project::live_v1("");
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nroute_timeout = \"500ms\"\n"));
    // nginx runs a site without the maintenance lines (an older snippet).
    let site = p.zdd(&["nginx"]).stdout;
    let start = site.find("    if ($zdd_testapp_closed)").unwrap();
    let end = start + site[start..].find("}\n").unwrap() + 2;
    p.start_nginx_with(&format!("{}{}", &site[..start], &site[end..]));
    let r = p.zdd(&["maintenance", "on"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("did not answer with zdd's maintenance page")
            && r.stderr.contains("zdd nginx --write --reload")
            && r.stderr.contains("maintenance is off"),
        "{r:?}"
    );
    assert_eq!(p.served(), "v1");
    assert!(p.status_json()["maintenance"].is_null());
    assert_eq!(
        std::fs::read_link(p.root().join("live")).unwrap(),
        std::path::Path::new("route/a")
    );

    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\nmode = \"round-robin\"\n"));
    let r = p.zdd(&["maintenance", "on"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("maintenance needs switch mode"), "{r:?}");
}
