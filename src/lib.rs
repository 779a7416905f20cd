//! zdd: zero-downtime deploys of a web app on one Linux host, two slots
//! behind nginx, steered by a switch nginx resolves when it connects. The binary's `main` calls [`run`].
//!
//! The modules, from the command line down:
//! - the program: `run` (dispatch, logging, exit codes), `cli`, `init`;
//! - the commands: `deploy` (deploy, rollback, `zdd up`), `named` (`zdd
//!   start`/`stop`), `report` (`status`, `history`), `logview` (`zdd logs`:
//!   the app logs, read and followed), `attempts` (each deploy attempt's
//!   output, `zdd logs --deploy`), `nginx` (render, write, reload),
//!   `maintenance` (close the site behind a page); `observe` (what really
//!   runs, against the state file);
//! - a swap's parts: `steer` (confirm through nginx, drain), `switch` (the
//!   symlink nginx resolves), `launch` (start and verify an app that stays up),
//!   `keeper` (the process that keeps an app up), `health`, `git`, `ports`;
//! - what zdd keeps: `state` (the state file), `lock`;
//! - the processes: `process` (spawn, run a step, prove, stop a group);
//! - plain data: `config` (its file and the env file read through `root`);
//! - the leaves: `root` (ownership and symlink rules, trusted reads),
//!   `fsutil` (atomic writes), `tree` (removing a tree another user can
//!   change), `slot`, `user`, `signals`, `error`, `text`.

pub mod attempts;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod fsutil;
pub mod git;
pub mod health;
pub mod init;
pub mod keeper;
pub mod launch;
pub mod lock;
pub mod logview;
pub mod maintenance;
pub mod named;
pub mod nginx;
pub mod observe;
pub mod ports;
pub mod process;
pub mod report;
pub mod root;
mod run;
pub mod signals;
pub mod slot;
pub mod state;
pub mod steer;
pub mod switch;
pub mod text;
pub mod tree;
pub mod user;

pub use run::run;
