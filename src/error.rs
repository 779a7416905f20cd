//! The one error type of zdd: every failure, its wording, and its exit code.
//!
//! Messages are lower case and read well after "zdd: ". Exit codes follow
//! SPEC §5: 1 the operation failed but what served still serves, 2 bad
//! usage/config/input (nothing changed), 3 the lock is held, 4 zdd could not
//! finish and the state needs attention; 5 (`zdd status` only) the site is
//! not serving.

use std::path::PathBuf;

/// Documented exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const LOCKED: i32 = 3;
    pub const NEEDS_ATTENTION: i32 = 4;
    /// `zdd status`: nothing healthy serves the site through nginx.
    pub const NOT_SERVING: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}:{column}: {message}")]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{0}")]
    Usage(String),

    #[error("config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("another zdd (pid {holder}) holds the lock {path}; try again later or pass --wait")]
    Locked { path: PathBuf, holder: String },

    #[error("timed out after {waited} waiting for the lock {path} held by pid {holder}")]
    LockTimeout {
        path: PathBuf,
        holder: String,
        waited: String,
    },

    #[error("state file {path} is corrupt or unreadable: {reason}; fix or move it aside (zdd never overwrites it)")]
    StateCorrupt { path: PathBuf, reason: String },

    #[error("{0}")]
    Failed(String),

    #[error("{0}")]
    NeedsAttention(String),

    /// `zdd status` found the site not serving (after printing the status).
    #[error("not serving: {0}")]
    NotServing(String),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("interrupted by {signal}; {what}")]
    Interrupted {
        signal: &'static str,
        number: i32,
        what: String,
    },

    /// Several things failed (`zdd up`); the exit code is the worst one's.
    #[error("{message}")]
    Several { code: i32, message: String },
}

impl Error {
    /// The process exit code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage(_) | Error::ConfigRead { .. } => exit::USAGE,
            Error::Locked { .. } | Error::LockTimeout { .. } => exit::LOCKED,
            Error::StateCorrupt { .. } | Error::NeedsAttention(_) | Error::Io { .. } => {
                exit::NEEDS_ATTENTION
            }
            Error::Failed(_) => exit::FAILED,
            Error::NotServing(_) => exit::NOT_SERVING,
            Error::Interrupted { number, .. } => 128 + number,
            Error::Several { code, .. } => *code,
        }
    }

    /// All of `errors` as one, with the exit code of the worst: a signal,
    /// then state that needs attention, a held lock, bad input, a failure.
    pub fn worst_of(errors: Vec<Error>) -> Result<()> {
        let rank = |code: i32| match code {
            c if c > 128 => 5,
            exit::NEEDS_ATTENTION => 4,
            exit::LOCKED => 3,
            exit::USAGE => 2,
            _ => 1,
        };
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.into_iter().next().expect("one")),
            _ => {
                let code = errors
                    .iter()
                    .map(Error::code)
                    .max_by_key(|&c| rank(c))
                    .expect("some");
                let message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\nzdd: ");
                Err(Error::Several { code, message })
            }
        }
    }

    /// zdd got `sig` and stopped what it did; `what` says what was left.
    pub fn interrupted(sig: nix::sys::signal::Signal, what: impl Into<String>) -> Error {
        Error::Interrupted {
            signal: sig.as_str(),
            number: sig as i32,
            what: what.into(),
        }
    }

    /// Wrap an I/O error with what was being done and to which path.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
