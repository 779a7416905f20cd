//! The app's log as its keeper writes it: capped at `logs.max_size` per
//! file and `logs.keep` rotated files whatever the app writes, every line
//! kept in order across rotations, named processes capped the same way,
//! and a full disk that costs lines (counted, said once space returns) but
//! never blocks the app.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// The files of the log `NAME.log` in `logs`, oldest first.
fn log_files(logs: &Path, name: &str, keep: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| logs.join(format!("{name}.log.{n}")))
        .collect();
    files.push(logs.join(format!("{name}.log")));
    files.into_iter().filter(|f| f.exists()).collect()
}

/// The numbers of the lines `PREFIX NUMBER ...` across `files`, in order.
fn numbered(files: &[PathBuf], prefix: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(prefix) {
                let n = rest.split_whitespace().next().unwrap();
                out.push(
                    n.parse()
                        .unwrap_or_else(|_| panic!("a broken line: {line:?}")),
                );
            }
        }
    }
    out
}

/// Every file at most `max` bytes, and no more files than `keep` rotated.
fn assert_capped(logs: &Path, name: &str, max: u64, keep: u32) {
    for f in log_files(logs, name, keep + 3) {
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len <= max, "{} is {len} bytes, over the cap", f.display());
    }
    let extra = logs.join(format!("{name}.log.{}", keep + 1));
    assert!(!extra.exists(), "{} kept beyond logs.keep", extra.display());
}

fn contains(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(text))
}

#[test]
fn the_cap_holds_while_the_app_writes_50_mib_and_every_line_arrives_in_order() {
    let _heavy = heavy();
    let mut p = Project::new("[logs]\nmax_size = \"1MiB\"\nkeep = 2\n");
    // 1.4 million lines of 38 bytes: 53 MB, as fast as seq writes them,
    // beside the app (it keeps serving meanwhile).
    p.commit(
        "v1",
        "(seq -f 'line %09.0f xxxxxxxxxxxxxxxxxxxxxx' 1 1400000; echo END-OF-LINES) &",
    );
    p.go_live();
    let logs = p.root().join("logs");
    assert!(
        wait_until(Duration::from_secs(120), || contains(
            &logs.join("a.log"),
            "END-OF-LINES"
        )),
        "the writer finished"
    );
    assert_eq!(p.served(), "v1");
    assert_capped(&logs, "a", MIB, 2);
    let files = log_files(&logs, "a", 2);
    assert_eq!(
        files.len(),
        3,
        "the current file and two rotated: {files:?}"
    );
    let lines = numbered(&files, "line ");
    assert_eq!(*lines.last().unwrap(), 1_400_000);
    // The newest ~2.9 MiB of lines, consecutive: none lost, none reordered.
    assert!(lines.len() > 75_000, "only {} lines kept", lines.len());
    for pair in lines.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a reordering in the log");
    }
    let index = std::fs::read_to_string(logs.join("a.log.times")).unwrap();
    assert!(index.lines().all(|l| l.split(' ').count() == 2), "{index}");
}

#[test]
fn a_named_process_gets_the_same_cap() {
    let _heavy = heavy();
    let p = Project::new("[logs]\nmax_size = \"1MiB\"\nkeep = 1\ntimestamps = true\n");
    let dir = p.path().join("named");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), "named1\n").unwrap();
    let port = free_port().to_string();
    let script = format!(
        "seq -f 'n %09.0f yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy' 1 100000; exec {}",
        example("app").display()
    );
    let r = p.zdd(&[
        "start",
        "web",
        dir.to_str().unwrap(),
        &port,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let logs = p.root().join("logs");
    assert_capped(&logs, "web", MIB, 1);
    let files = log_files(&logs, "web", 1);
    assert_eq!(files.len(), 2, "{files:?}");
    // With timestamps: each line starts with its time, then the app's text.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let line = text.lines().find(|l| l.contains(" n ")).unwrap();
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{line}");
    assert!(rest.starts_with("n "), "{line}");
    // Whole lines, ordered to the last one.
    let lines: Vec<u64> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| {
                    l.split_once(" n ")
                        .map(|(_, n)| n.split(' ').next().unwrap().parse().unwrap())
                })
                .collect::<Vec<u64>>()
        })
        .collect();
    assert_eq!(*lines.last().unwrap(), 100_000);
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1));
    let r = p.zdd(&["stop", "web"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// A small tmpfs over a folder, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "cannot mount a tmpfs at {} (this test needs root)",
            at.display()
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_costs_lines_never_the_app_and_the_loss_is_said_once_space_returns() {
    if !is_root() {
        eprintln!("NOT RUN: a full disk needs a tmpfs mount, which needs root");
        return;
    }
    let _heavy = heavy();
    let mut p = Project::new("[logs]\nmax_size = \"1MiB\"\nkeep = 1\n");
    let flag = |name: &str| p.path().join(name).display().to_string();
    let (burst_done, go_on) = (flag("burst-done"), flag("go-on"));
    // A burst that fills the disk, then (once the test frees space) one
    // more line.
    p.commit(
        "v1",
        &format!(
            "(seq -f 'burst %09.0f zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz' 1 100000; touch {burst_done}; \
             while [ ! -e {go_on} ]; do sleep 0.05; done; echo AFTER-THE-FULL-DISK) &"
        ),
    );
    // Room for a little more than one file: the rotated file and the new
    // one cannot both fill.
    let logs = p.root().join("logs");
    let disk = SmallDisk::mount(&logs, "1536k");
    p.go_live();
    // The app's writes never block on the full disk: the burst ends, and
    // the app serves.
    assert!(
        wait_until(Duration::from_secs(60), || Path::new(&burst_done).exists()),
        "the app's writer was blocked by the full disk"
    );
    assert_eq!(p.served(), "v1");
    let status = p.status_json();
    assert_eq!(status["serving"], true, "{status}");
    // Space returns: the operator removes the rotated file.
    std::fs::remove_file(logs.join("a.log.1")).unwrap();
    std::fs::write(&go_on, "").unwrap();
    let log = logs.join("a.log");
    assert!(
        wait_until(Duration::from_secs(30), || contains(
            &log,
            "AFTER-THE-FULL-DISK"
        )),
        "the line after the full disk was written"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let notes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("line(s) lost"))
        .collect();
    assert_eq!(
        notes.len(),
        1,
        "one line says how many were lost: {notes:?}"
    );
    assert!(notes[0].contains("No space left on device"), "{}", notes[0]);
    let lost: u64 = notes[0]
        .split("keeper ")
        .nth(1)
        .and_then(|r| r.split(": ").nth(1))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count in {:?}", notes[0]));
    // 100,000 lines of 48 bytes went into ~1.5 MiB: most were lost, and
    // counted.
    assert!(lost > 50_000, "{lost} lost");
    let note_at = text.find("line(s) lost").unwrap();
    assert!(note_at < text.find("AFTER-THE-FULL-DISK").unwrap());
    p.kill_everything();
    drop(disk);
}

#[test]
fn when_its_keeper_is_killed_nothing_hangs_on_the_pipe_nobody_reads() {
    let _heavy = heavy();
    let mut p = Project::new("");
    let pid_file = p.path().join("writer.pid");
    // A writer beside the app, outside the parent-death signal's reach:
    // only the pipe can end it.
    p.commit(
        "v1",
        &format!(
            "sh -c 'echo $$ > {}; while :; do echo tick; sleep 0.01; done' &",
            pid_file.display()
        ),
    );
    p.go_live();
    assert!(wait_until(Duration::from_secs(10), || pid_file.exists()
        && contains(&p.root().join("logs/a.log"), "tick")));
    let writer: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let keepers = p.keeper_pids();
    assert_eq!(keepers.len(), 1);
    kill(keepers[0], nix::sys::signal::Signal::SIGKILL);
    // The app goes down with its keeper (its stop signal), and the writer's
    // next line meets a pipe without a reader (SIGPIPE): nothing waits.
    assert!(
        wait_until(Duration::from_secs(15), || p.app_pids().is_empty()
            && !Path::new(&format!("/proc/{writer}")).exists()),
        "the app or its writer still runs after its keeper died"
    );
    let r = p.zdd(&["up"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(p.served(), "v1");
}
