//! The keeper as data: its phases (starting, running, backing off,
//! stopping), the events it sees, and the pure [`Machine::step`] that turns
//! one event into the actions the keeper then carries out (`supervise`).
//! The restart delays and the crash-loop rollback policy live here, where
//! made-up events can test them.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::status::KeeperStatus;
use crate::text::fmt_ms;

/// How long an app must run for the restart delay to start over.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// The delay before the next start after an exit: 0 for the first, then
/// 100 ms doubling to 30 s; `reset` (10 s up) starts the series again
/// (Docker's rule).
pub fn next_delay(previous: Option<Duration>, reset: bool) -> Duration {
    match previous {
        _ if reset => Duration::ZERO,
        None => Duration::ZERO,
        Some(d) if d.is_zero() => Duration::from_millis(100),
        Some(d) => (d * 2).min(Duration::from_secs(30)),
    }
}

/// Where the keeper is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// The app is to be started now; `restart` when it ran before (then
    /// the keeper first checks that it is still wanted).
    Starting {
        restart: bool,
    },
    Running {
        pid: i32,
        since: Instant,
    },
    /// Waiting to start the app again.
    Backoff {
        until: Instant,
        restart: bool,
    },
    /// Told to stop: waiting for the app (if one runs) to exit, and passing
    /// the stop on once after the stop timeout.
    Stopping {
        since: Instant,
        app: Option<i32>,
        forwarded: bool,
    },
}

/// What the keeper saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The deadline ([`Machine::deadline`]) passed.
    Due,
    Started {
        pid: i32,
    },
    StartFailed {
        error: String,
    },
    /// Before a restart: the app is no longer wanted, for this reason.
    Unwanted {
        why: String,
    },
    /// zdd's arm signal.
    Arm,
    /// A stop: zdd's notice, the app's stop signal, SIGTERM or SIGINT.
    Stop,
    /// The keeper's child `pid` exited.
    Exited {
        pid: i32,
        status: ExitStatus,
    },
}

/// What the keeper is to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the app (after checking, if `restart`, that it is wanted);
    /// the outcome comes back as [`Event::Started`], [`Event::StartFailed`]
    /// or [`Event::Unwanted`].
    Start { restart: bool },
    /// One marker line in the log.
    Say(String),
    /// Write the status file.
    Save,
    /// Kill what the app left behind.
    ClearRemnants,
    /// Send the stop signal to the group (it came to the keeper alone).
    ForwardStop,
    /// Run `zdd rollback`, bounded by `within`.
    RollBack { reason: String, within: Duration },
    /// End the keeper.
    Exit(End),
}

/// How the keeper ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// With this code.
    Code(i32),
    /// As its app ended (same code or signal): the app failed before it
    /// was armed, and zdd, which watches it, decides.
    Like(ExitStatus),
    /// A stop is done: the app exited with this status (or was not
    /// running); wait for its leftovers until `since` + the stop timeout.
    Stopped {
        status: Option<ExitStatus>,
        since: Instant,
    },
}

/// The crash-loop rollback: after `after` exits within `within` of arming.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackPolicy {
    pub after: u32,
    pub within: Duration,
}

/// The keeper's state: its phase and what its policies count.
#[derive(Debug, Clone)]
pub struct Machine {
    pub phase: Phase,
    /// What the status file says (the machine keeps its own fields true).
    pub status: KeeperStatus,
    armed_at: Option<Instant>,
    /// The last restart delay, once the app exited or failed to start.
    delay: Option<Duration>,
    /// Exits on its own within the rollback window after arming.
    exits_in_window: u32,
    rollback: Option<RollbackPolicy>,
    stop_timeout: Duration,
}

impl Machine {
    pub fn new(
        status: KeeperStatus,
        rollback: Option<RollbackPolicy>,
        stop_timeout: Duration,
    ) -> Machine {
        Machine {
            phase: Phase::Starting { restart: false },
            status,
            armed_at: None,
            delay: None,
            exits_in_window: 0,
            rollback,
            stop_timeout,
        }
    }

    pub fn armed(&self) -> bool {
        self.armed_at.is_some()
    }

    /// When the keeper must act without an event ([`Event::Due`]).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.phase {
            Phase::Starting { .. } => Some(now),
            Phase::Backoff { until, .. } => Some(until),
            Phase::Stopping {
                since,
                app: Some(_),
                forwarded: false,
            } => Some(since + self.stop_timeout),
            _ => None,
        }
    }

    /// The one transition: the actions for `event` seen at `now` (`wall`
    /// is the same time as the status file writes it).
    pub fn step(&mut self, event: Event, now: Instant, wall: &str) -> Vec<Action> {
        use Action::*;
        match (self.phase.clone(), event) {
            (_, Event::Arm) if self.armed_at.is_none() => {
                self.armed_at = Some(now);
                self.status.armed_at = Some(wall.to_string());
                vec![Save]
            }
            (Phase::Stopping { .. }, Event::Stop) | (_, Event::Arm) => vec![],
            (phase, Event::Stop) => {
                let app = match phase {
                    Phase::Running { pid, .. } => Some(pid),
                    _ => None,
                };
                self.phase = Phase::Stopping {
                    since: now,
                    app,
                    forwarded: false,
                };
                self.status.stopping = true;
                self.status.backoff_ms = None;
                match app {
                    Some(_) => vec![Save],
                    None => vec![
                        Save,
                        Exit(End::Stopped {
                            status: None,
                            since: now,
                        }),
                    ],
                }
            }
            (Phase::Starting { restart }, Event::Due) => vec![Start { restart }],
            (Phase::Backoff { until, restart }, Event::Due) if until <= now => {
                self.phase = Phase::Starting { restart };
                vec![Start { restart }]
            }
            (
                Phase::Stopping {
                    since,
                    app: Some(pid),
                    forwarded: false,
                },
                Event::Due,
            ) if since + self.stop_timeout <= now => {
                self.phase = Phase::Stopping {
                    since,
                    app: Some(pid),
                    forwarded: true,
                };
                // A stop that came to the keeper alone (not to the group)
                // never reached the app: pass it on, once, after the time
                // the app would have had to finish. Sooner would stop an
                // app that got it from the group twice.
                vec![ForwardStop]
            }
            (_, Event::Due) => vec![],
            (Phase::Starting { .. }, Event::Started { pid }) => {
                self.phase = Phase::Running { pid, since: now };
                self.status.app_pid = Some(pid);
                self.status.app_started_at = Some(wall.to_string());
                self.status.backoff_ms = None;
                self.status.start_failed = None;
                vec![Save]
            }
            (Phase::Starting { .. }, Event::StartFailed { error }) if !self.armed() => {
                // Saved first: zdd, which watches, reads why in the status.
                self.status.start_failed = Some(error.clone());
                vec![
                    Say(format!("cannot start the app: {error}")),
                    Save,
                    Exit(End::Code(1)),
                ]
            }
            (Phase::Starting { .. }, Event::StartFailed { error }) => {
                // As if it had exited at once: back off, never spin.
                let wait = next_delay(self.delay, false).max(Duration::from_millis(100));
                self.delay = Some(wait);
                self.phase = Phase::Backoff {
                    until: now + wait,
                    restart: true,
                };
                self.status.last_exit = Some(format!("cannot start: {error}"));
                self.status.last_exit_at = Some(wall.to_string());
                self.status.start_failed = Some(error.clone());
                self.status.backoff_ms = Some(wait.as_millis() as u64);
                vec![
                    Say(format!(
                        "cannot start the app: {error}; trying again in {}",
                        fmt_ms(wait.as_millis() as u64)
                    )),
                    Save,
                ]
            }
            (Phase::Starting { .. }, Event::Unwanted { why }) => vec![
                Say(format!("{why}; not starting the app again")),
                Save,
                Exit(End::Code(0)),
            ],
            (Phase::Running { pid, since }, Event::Exited { pid: child, status })
                if child == pid =>
            {
                self.status.app_pid = None;
                if !self.armed() {
                    // Probation: zdd is watching; it decides. Nothing the
                    // app started outlives it.
                    return vec![ClearRemnants, Save, Exit(End::Like(status))];
                }
                self.exited(status, now.saturating_duration_since(since), now, wall)
            }
            (
                Phase::Stopping {
                    since,
                    app: Some(pid),
                    ..
                },
                Event::Exited { pid: child, status },
            ) if child == pid => {
                self.status.app_pid = None;
                vec![Exit(End::Stopped {
                    status: Some(status),
                    since,
                })]
            }
            // Results that come too late for their phase, and children
            // that are not the app (orphans handed to the keeper): nothing.
            _ => vec![],
        }
    }

    /// The armed app exited on its own after `up`: count it, say so, back
    /// off, and maybe ask for a rollback.
    fn exited(
        &mut self,
        status: ExitStatus,
        up: Duration,
        now: Instant,
        wall: &str,
    ) -> Vec<Action> {
        let wait = next_delay(self.delay, up >= RESET_AFTER);
        self.delay = Some(wait);
        self.phase = Phase::Backoff {
            until: now + wait,
            restart: true,
        };
        let what = status.to_string();
        self.status.restarts += 1;
        self.status.last_exit = Some(what.clone());
        self.status.last_exit_at = Some(wall.to_string());
        self.status.backoff_ms = Some(wait.as_millis() as u64);
        let mut actions = vec![
            Action::ClearRemnants,
            Action::Say(format!(
                "the app exited on its own ({what}) after {} up; starting it again {}",
                fmt_ms(up.as_millis() as u64),
                if wait.is_zero() {
                    "at once".to_string()
                } else {
                    format!("in {}", fmt_ms(wait.as_millis() as u64))
                }
            )),
        ];
        // Only exits inside the window count, and only until it asked once.
        if let (Some(policy), Some(armed), None) =
            (self.rollback, self.armed_at, &self.status.rollback)
        {
            let since_arming = now.saturating_duration_since(armed);
            if since_arming <= policy.within {
                self.exits_in_window += 1;
            }
            if policy.after > 0 && self.exits_in_window >= policy.after {
                let reason = format!(
                    "exited {} times in {} after its swap; last: {what}",
                    self.exits_in_window,
                    humantime::format_duration(Duration::from_secs(since_arming.as_secs()))
                );
                self.status.rollback = Some(reason.clone());
                actions.push(Action::Say(format!("rolling back: the release {reason}")));
                actions.push(Action::RollBack {
                    reason,
                    within: policy.within,
                });
            }
        }
        actions.push(Action::Save);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    /// A machine and a clock that the test moves.
    struct Run {
        m: Machine,
        t0: Instant,
        now: Instant,
    }

    impl Run {
        fn new(rollback: Option<RollbackPolicy>) -> Run {
            let t0 = Instant::now();
            Run {
                m: Machine::new(KeeperStatus::default(), rollback, Duration::from_secs(5)),
                t0,
                now: t0,
            }
        }
        fn at(&mut self, secs: f64) -> &mut Run {
            self.now = self.t0 + Duration::from_secs_f64(secs);
            self
        }
        fn ev(&mut self, e: Event) -> Vec<Action> {
            self.m.step(e, self.now, "T")
        }
        /// Start the app as pid `pid` (the deadline must be due).
        fn start(&mut self, pid: i32) {
            assert!(self.m.deadline(self.now).is_some_and(|d| d <= self.now));
            let a = self.ev(Event::Due);
            assert!(matches!(a[..], [Action::Start { .. }]), "{a:?}");
            assert_eq!(self.ev(Event::Started { pid }), vec![Action::Save]);
        }
        fn says(actions: &[Action], text: &str) -> bool {
            actions
                .iter()
                .any(|a| matches!(a, Action::Say(s) if s.contains(text)))
        }
    }

    #[test]
    fn restart_delays_follow_dockers_rule() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..12 {
            let next = next_delay(d, false);
            seen.push(next.as_millis() as u64);
            d = Some(next);
        }
        assert_eq!(
            seen,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(
            next_delay(d, true),
            Duration::ZERO,
            "10 s up: at once again"
        );
    }

    #[test]
    fn before_arming_an_exit_ends_the_keeper_like_the_app() {
        let mut r = Run::new(None);
        assert_eq!(r.ev(Event::Due), vec![Action::Start { restart: false }]);
        assert_eq!(r.ev(Event::Started { pid: 7 }), vec![Action::Save]);
        assert_eq!(r.m.status.app_pid, Some(7));
        // An orphan handed to the keeper is no exit of the app.
        assert_eq!(
            r.ev(Event::Exited {
                pid: 99,
                status: exit(0)
            }),
            vec![]
        );
        let a = r.at(1.0).ev(Event::Exited {
            pid: 7,
            status: exit(3),
        });
        assert_eq!(
            a,
            vec![
                Action::ClearRemnants,
                Action::Save,
                Action::Exit(End::Like(exit(3)))
            ]
        );
    }

    #[test]
    fn a_start_that_fails_before_arming_ends_the_keeper_and_after_backs_off() {
        let mut r = Run::new(None);
        r.ev(Event::Due);
        let a = r.ev(Event::StartFailed {
            error: "no sh".into(),
        });
        assert_eq!(a.last(), Some(&Action::Exit(End::Code(1))));
        assert!(a.contains(&Action::Save), "zdd reads why: {a:?}");
        assert_eq!(r.m.status.start_failed.as_deref(), Some("no sh"));

        let mut r = Run::new(None);
        r.ev(Event::Arm);
        r.ev(Event::Due);
        let a = r.ev(Event::StartFailed {
            error: "no sh".into(),
        });
        assert!(Run::says(&a, "trying again in 100ms"), "{a:?}");
        assert_eq!(r.m.status.start_failed.as_deref(), Some("no sh"));
        // Never a spin: the next try waits.
        assert_eq!(
            r.m.deadline(r.now),
            Some(r.now + Duration::from_millis(100))
        );
        assert_eq!(r.ev(Event::Due), vec![], "not due yet");
        assert_eq!(
            r.at(0.1).ev(Event::Due),
            vec![Action::Start { restart: true }]
        );
        r.ev(Event::Started { pid: 9 });
        assert_eq!(r.m.status.start_failed, None, "started: nothing failed");
    }

    #[test]
    fn an_armed_app_is_restarted_with_backoff_and_the_series_resets() {
        let mut r = Run::new(None);
        r.start(1);
        r.ev(Event::Arm);
        assert_eq!(r.m.status.armed_at.as_deref(), Some("T"));
        let mut pid = 1;
        let mut t = 0.0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            t += 1.0;
            let a = r.at(t).ev(Event::Exited {
                pid,
                status: exit(1),
            });
            assert_eq!(a[0], Action::ClearRemnants);
            waits.push(r.m.status.backoff_ms.unwrap());
            t += r.m.status.backoff_ms.unwrap() as f64 / 1000.0;
            pid += 1;
            r.at(t).start(pid);
        }
        assert_eq!(waits, [0, 100, 200, 400]);
        assert_eq!(r.m.status.restarts, 4);
        assert_eq!(r.m.status.last_exit.as_deref(), Some("exit status: 1"));
        // 10 s up: at once again.
        let a = r.at(t + 10.0).ev(Event::Exited {
            pid,
            status: exit(1),
        });
        assert!(Run::says(&a, "starting it again at once"), "{a:?}");
        // A restart first asks whether the app is still wanted.
        assert_eq!(r.ev(Event::Due), vec![Action::Start { restart: true }]);
        let a = r.ev(Event::Unwanted {
            why: "its root is gone".into(),
        });
        assert_eq!(a.last(), Some(&Action::Exit(End::Code(0))));
    }

    #[test]
    fn a_crash_loop_after_arming_asks_for_one_rollback() {
        let policy = RollbackPolicy {
            after: 3,
            within: Duration::from_secs(60),
        };
        let mut r = Run::new(Some(policy));
        r.start(1);
        r.ev(Event::Arm);
        let mut rollbacks = 0;
        let mut pid = 1;
        for i in 1..=5 {
            let a = r.at(i as f64).ev(Event::Exited {
                pid,
                status: exit(1),
            });
            rollbacks += a
                .iter()
                .filter(|a| matches!(a, Action::RollBack { .. }))
                .count();
            if i == 3 {
                assert!(
                    a.contains(&Action::RollBack {
                        reason: "exited 3 times in 3s after its swap; last: exit status: 1".into(),
                        within: policy.within
                    }),
                    "{a:?}"
                );
            }
            pid += 1;
            r.at(i as f64 + 0.9).start(pid);
        }
        assert_eq!(rollbacks, 1, "it asks once");
        assert!(r.m.status.rollback.is_some());
    }

    #[test]
    fn exits_outside_the_window_do_not_count() {
        let policy = RollbackPolicy {
            after: 2,
            within: Duration::from_secs(60),
        };
        let mut r = Run::new(Some(policy));
        r.start(1);
        r.ev(Event::Arm);
        let a = r.at(100.0).ev(Event::Exited {
            pid: 1,
            status: exit(1),
        });
        r.at(100.0).start(2);
        let b = r.at(120.0).ev(Event::Exited {
            pid: 2,
            status: exit(1),
        });
        assert!(!a
            .iter()
            .chain(&b)
            .any(|a| matches!(a, Action::RollBack { .. })));
        // Not armed: never a rollback.
        let mut r = Run::new(Some(RollbackPolicy { after: 1, ..policy }));
        r.start(1);
        let a = r.ev(Event::Exited {
            pid: 1,
            status: exit(1),
        });
        assert!(!a.iter().any(|a| matches!(a, Action::RollBack { .. })));
    }

    #[test]
    fn a_stop_waits_for_the_app_and_passes_the_stop_on_once() {
        let mut r = Run::new(None);
        r.start(1);
        r.ev(Event::Arm);
        assert_eq!(r.at(1.0).ev(Event::Stop), vec![Action::Save]);
        assert!(r.m.status.stopping);
        assert_eq!(r.ev(Event::Stop), vec![], "a second stop changes nothing");
        assert_eq!(r.m.deadline(r.now), Some(r.t0 + Duration::from_secs(6)));
        let a = r.at(6.0).ev(Event::Due);
        assert_eq!(a.last(), Some(&Action::ForwardStop));
        assert_eq!(r.m.deadline(r.now), None, "once");
        let a = r.at(7.0).ev(Event::Exited {
            pid: 1,
            status: exit(0),
        });
        assert_eq!(
            a,
            vec![Action::Exit(End::Stopped {
                status: Some(exit(0)),
                since: r.t0 + Duration::from_secs(1)
            })]
        );
    }

    #[test]
    fn a_stop_while_backing_off_ends_at_once_and_never_restarts() {
        let mut r = Run::new(None);
        r.start(1);
        r.ev(Event::Arm);
        r.at(20.0).ev(Event::Exited {
            pid: 1,
            status: exit(1),
        });
        r.at(20.0).start(2);
        r.at(21.0).ev(Event::Exited {
            pid: 2,
            status: exit(1),
        });
        assert!(matches!(r.m.phase, Phase::Backoff { .. }));
        let a = r.ev(Event::Stop);
        assert_eq!(
            a.last(),
            Some(&Action::Exit(End::Stopped {
                status: None,
                since: r.now
            }))
        );
        assert_eq!(r.m.status.backoff_ms, None);
    }

    #[test]
    fn arming_is_remembered_once() {
        let mut r = Run::new(None);
        assert_eq!(r.ev(Event::Arm), vec![Action::Save]);
        assert_eq!(r.at(5.0).ev(Event::Arm), vec![]);
        assert!(r.m.armed());
    }
}
