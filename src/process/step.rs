//! A build or hook run to completion in a session of its own, its stdout
//! and stderr one pipe that zdd reads while it waits, passing each chunk on
//! (into the attempt's file, capped as it runs: `attempts::StepOutput`);
//! stopped if zdd is signalled.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::Signal;

use super::{become_user, identify, poll_interval, stop_group_watched, Spec, Started, StopWith};

/// The most read from a step's pipe between two looks at the step and at
/// zdd's signals: a step that writes without a pause cannot hold zdd.
const READ_BURST: usize = 4 * 1024 * 1024;

/// How a step that runs to completion (build, hook) ended.
pub enum StepEnd {
    Exited(ExitStatus),
    /// zdd got a signal; the step's group was stopped.
    Interrupted(Signal),
}

/// A build or hook running, and the read end of its output's pipe.
pub struct RunningStep {
    pub started: Started,
    output: std::io::PipeReader,
    /// Nothing more can come through the pipe (every writer closed it).
    closed: bool,
}

/// Start a build or hook (`sh -c`, not `exec`) in its own process group,
/// its stdout and stderr the write end of one pipe (the spec's log is not
/// opened: [`wait_step`] passes the output on).
pub fn spawn_step(spec: &Spec) -> std::io::Result<RunningStep> {
    let (output, input) = std::io::pipe()?;
    // Only zdd's end, before anything runs (it is close-on-exec).
    nix::fcntl::fcntl(
        output.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(spec.command);
    let mut cmd = spec.placed(sh, true);
    cmd.stdout(input.try_clone()?).stderr(input);
    if let Some(user) = spec.run_as {
        become_user(&mut cmd, user);
    }
    let started = identify(cmd.spawn()?, None)?;
    // zdd's own copies of the write end go with `cmd`: once the step and
    // what it started close theirs, the pipe says so.
    drop(cmd);
    Ok(RunningStep {
        started,
        output,
        closed: false,
    })
}

/// Wait for a build or hook to finish, passing its output to `out` as it
/// comes. If zdd is signalled meanwhile and the step is `interruptible`,
/// its group is stopped (its output still read meanwhile: a step that
/// cleans up, printing, never blocks on a full pipe) and that is
/// reported. What a process the step left behind writes after the step
/// ended is not waited for: once zdd's end of the pipe is closed, it gets
/// SIGPIPE (a hook starts what must keep running with its output
/// redirected, or under `zdd start`).
pub fn wait_step(
    step: &mut RunningStep,
    interruptible: bool,
    out: &mut dyn FnMut(&[u8]),
) -> std::io::Result<StepEnd> {
    let since = Instant::now();
    let mut buf = vec![0; 64 * 1024];
    loop {
        step.pass_on(&mut buf, out);
        if let Some(status) = step.started.child.try_wait()? {
            step.pass_on(&mut buf, out); // what it wrote last
            return Ok(StepEnd::Exited(status));
        }
        if let Some(sig) = crate::signals::pending().filter(|_| interruptible) {
            let RunningStep {
                started,
                output,
                closed,
            } = step;
            let mut watch = || pass_on(output, closed, &mut buf, out);
            stop_group_watched(
                &started.id,
                StopWith::STEP,
                Some(&mut started.child),
                &mut watch,
            );
            let _ = started.child.wait();
            step.pass_on(&mut buf, out);
            return Ok(StepEnd::Interrupted(sig));
        }
        step.await_output(poll_interval(since.elapsed()));
    }
}

impl RunningStep {
    /// Read what the pipe holds now (at most [`READ_BURST`]) into `out`.
    fn pass_on(&mut self, buf: &mut [u8], out: &mut dyn FnMut(&[u8])) {
        pass_on(&self.output, &mut self.closed, buf, out);
    }

    /// Until output comes, or `most` passes.
    fn await_output(&self, most: Duration) {
        if self.closed {
            std::thread::sleep(most);
            return;
        }
        let mut fd = libc::pollfd {
            fd: self.output.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = most.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, ms) };
    }
}

/// Read what `output` holds now (at most [`READ_BURST`]) into `out`;
/// `closed` once every writer closed it.
fn pass_on(
    output: &std::io::PipeReader,
    closed: &mut bool,
    buf: &mut [u8],
    out: &mut dyn FnMut(&[u8]),
) {
    let mut reader = output; // `Read` is for `&PipeReader`
    let mut read = 0;
    while !*closed && read < READ_BURST {
        match reader.read(buf) {
            Ok(0) => *closed = true,
            Ok(n) => {
                out(&buf[..n]);
                read += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => *closed = true,
        }
    }
}
