//! The keeper protocol: the two real-time signals that zdd sends a keeper
//! alone (never its group), and what each means. SIGRTMIN arms it (from
//! now on it restarts its app, and may roll back a crash loop);
//! SIGRTMIN+1 comes just before zdd stops its group, so the app's exit that
//! follows is no crash, whatever the app's stop signal is. It lives with
//! the processes because `stop` sends the second; the keeper receives both.

use nix::libc;

/// The signal that arms a keeper.
pub fn arm_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// The signal that tells a keeper its group is about to be stopped.
pub fn stop_notice_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// Arm the keeper `pid`: from now on it restarts the app.
pub fn arm(pid: i32) -> std::io::Result<()> {
    crate::signals::send_number(pid, arm_signal())
}

/// Tell the keeper `pid` that its group is about to be stopped.
pub fn notify_stop(pid: i32) -> std::io::Result<()> {
    crate::signals::send_number(pid, stop_notice_signal())
}
