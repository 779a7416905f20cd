//! root is zdd's, and every message and exit code points at the cause:
//! symlinks planted where zdd keeps its files are refused and their targets
//! left alone, folders others can write are refused, a slot's port is not
//! given to `zdd start`, and the exit codes mean what the README says.

use crate::support::*;
use std::path::Path;

/// Every file and folder below `dir`, with the content of the files.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = path.display().to_string();
        if path.is_dir() {
            all.push((name, String::new()));
            all.extend(snapshot(&path));
        } else {
            all.push((name, std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
    all.sort();
    all
}

#[test]
fn symlinks_where_zdd_keeps_its_files_are_refused_and_their_targets_untouched() {
    let (p, v2) = Project::live_v1_with_v2("");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me\n").unwrap();
    std::fs::create_dir(outside.path().join("folder")).unwrap();
    std::fs::write(outside.path().join("folder/data"), "keep me too\n").unwrap();
    let before = snapshot(outside.path());
    let root = p.root();
    // (where zdd keeps something, a file or a folder there)
    let release = format!("releases/{v2}");
    let index = format!("git/index/{v2}");
    for (planted, folder) in [
        (release.as_str(), true),
        ("releases", true),
        ("git/repo", true),
        (index.as_str(), true),
        ("logs", true),
        ("route", true),
        ("zdd.lock", false),
        ("state.toml", false),
        ("logs/b.log", false),
        ("logs/deploys", true),
    ] {
        let path = root.join(planted);
        let aside = root.join(format!("{planted}.aside"));
        if path.exists() {
            std::fs::rename(&path, &aside).unwrap();
        }
        let target = outside
            .path()
            .join(if folder { "folder" } else { "precious" });
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let r = p.zdd(&["deploy", &v2]);
        assert_eq!(r.code, 2, "{planted}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("{} is a symlink", path.display())),
            "{planted}: {r:?}"
        );
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{planted}: one sentence: {r:?}"
        );
        assert_eq!(
            snapshot(outside.path()),
            before,
            "{planted}: target untouched"
        );
        assert_eq!(p.served(), "v1", "{planted}");
        std::fs::remove_file(&path).unwrap();
        if aside.exists() {
            std::fs::rename(&aside, &path).unwrap();
        }
    }
    // A named process's record and log too.
    std::fs::create_dir_all(root.join("run")).unwrap();
    for planted in ["run/web.toml", "logs/web.log"] {
        let path = root.join(planted);
        std::os::unix::fs::symlink(outside.path().join("precious"), &path).unwrap();
        let r = p.start_named("web", free_port());
        assert_eq!(r.code, 2, "{planted}: {r:?}");
        assert!(r.stderr.contains("is a symlink"), "{planted}: {r:?}");
        assert_eq!(
            snapshot(outside.path()),
            before,
            "{planted}: target untouched"
        );
        std::fs::remove_file(&path).unwrap();
    }
    // With everything back in place, the deploy goes through.
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v2");
}

#[test]
fn a_root_others_can_write_or_that_is_not_a_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (p, v2) = Project::live_v1_with_v2("");
    let state = p.state_bytes();
    std::fs::set_permissions(p.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("chmod go-w {}", p.root().display()))
            && r.stderr.contains("(mode 0777)"),
        "{r:?}"
    );
    std::fs::set_permissions(p.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        p.root().join("releases"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    let r = p.zdd(&["rollback"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("releases is writable by group or others"),
        "{r:?}"
    );
    std::fs::set_permissions(
        p.root().join("releases"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(p.state_bytes(), state, "nothing changed");
    assert_eq!(p.served(), "v1");

    // root = a file (like /etc/passwd): not "state corrupt", but this.
    let file = p.path().join("a-file");
    std::fs::write(&file, "x\n").unwrap();
    p.edit_config(|c| {
        c.replace(
            "root = \"state\"",
            &format!("root = {:?}", file.display().to_string()),
        )
    });
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is not a directory"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x\n");
}

#[test]
fn zdd_start_never_takes_a_slot_port_or_a_taken_one() {
    let p = Project::new("");
    let start = |port: u16| p.start_named("web", port);
    for (slot, port) in [("a", p.ports[0]), ("b", p.ports[1])] {
        let r = start(port);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr
                .contains(&format!("port {port} is slot {slot}'s port")),
            "{r:?}"
        );
        assert!(!listening(port), "nothing started");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = start(port);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "port {port} is taken by pid {}",
            std::process::id()
        )),
        "{r:?}"
    );
    assert!(!p.root().join("run/web.toml").exists());
}

#[test]
fn exit_codes_say_what_the_readme_says() {
    let p = Project::new("");
    // `zdd stop NAME` on a fresh root: nothing named so, and nothing created.
    let fresh = p.path().join("fresh-root");
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.args(["stop", "web"]).env("ZDD_ROOT", &fresh);
    let r = run_bounded(cmd, std::time::Duration::from_secs(30));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("nothing named web was started here"),
        "{r:?}"
    );
    assert!(!fresh.exists(), "nothing created");
    let r = p.zdd(&["stop", "web"]);
    assert_eq!(r.code, 2, "with a config too: {r:?}");

    // A missing config file says it is the config file.
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.args(["-c", "/nonexistent/zdd.toml", "status"]);
    let r = run_bounded(cmd, std::time::Duration::from_secs(30));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .starts_with("zdd: config file /nonexistent/zdd.toml: "),
        "{r:?}"
    );

    // Writing into a folder that is not there: bad input, not "state".
    p.edit_config(|c| c.replace("[nginx]\n", "[nginx]\noutput = \"no/such/dir/site.conf\"\n"));
    let r = p.zdd(&["nginx", "--write"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("(nginx.output)"), "{r:?}");
    // `init` makes the folders it needs, but not below a file.
    let mut cmd = std::process::Command::new(zdd_bin());
    cmd.args(["-c"])
        .arg(p.config_path().join("sub/zdd.toml"))
        .arg("init");
    let r = run_bounded(cmd, std::time::Duration::from_secs(30));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot create"), "{r:?}");
}

#[test]
fn messages_point_at_the_cause() {
    let _heavy = heavy();
    let (mut p, v2) = Project::live_v1_with_v2("");
    // --reload without nginx's pid names the key that says where it is.
    p.edit_config(|c| {
        c.replace(
            "pid_file = \"nginx/nginx.pid\"",
            "pid_file = \"nginx/other.pid\"",
        )
    });
    let r = p.zdd(&["nginx", "--reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("(nginx.pid_file)"), "{r:?}");
    assert!(r.stderr.contains("set nginx.pid_file"), "{r:?}");

    // A foreign process on the standby port is named in status.
    let foreign = std::net::TcpListener::bind(("127.0.0.1", p.ports[1])).unwrap();
    let s = p.zdd(&["status"]);
    let line = s
        .stdout
        .lines()
        .find(|l| l.contains("slot b"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&format!(
            "not running; port {} held by pid {}",
            p.ports[1],
            std::process::id()
        )),
        "{s:?}"
    );
    assert!(!line.contains("healthy"), "{s:?}");
    drop(foreign);

    // A failed commit that is not the branch tip: cron is not said to skip it.
    let broken = p.commit("v3", "export APP_STATUS=500");
    p.commit("v4", "");
    p.edit_config(|c| c.replace("timeout = \"15s\"", "timeout = \"1s\""));
    let r = p.zdd(&["deploy", &broken]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!r.stderr.contains("cron runs will not retry"), "{r:?}");
    // The tip failing: cron waits for the branch to move, and says which.
    let tip = p.commit("v5", "export APP_STATUS=500");
    let r = p.zdd(&["deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cron runs will not retry {}, the tip of main, until main moves",
            &tip[..12]
        )),
        "{r:?}"
    );

    // nginx down: nothing answers on nginx.listen, said so.
    p.nginx = None;
    let r = p.zdd(&["deploy", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("nothing answers on nginx.listen"),
        "{r:?}"
    );
    assert_eq!(p.served_direct(0), "v1", "the old slot serves on");
}
