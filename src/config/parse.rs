//! From `zdd.toml`'s text to a [`Config`]: the top-level keys, relative
//! paths anchored at the file's folder, and every error placed at its
//! file:line:col ([`Source::at`]). The tables are checked in `sections`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{duration_bounds, HumanDuration, RawConfig};
use super::{Config, Hooks, Shared};
use crate::error::{Error, Result};
use crate::user::resolve_user;

/// The file being parsed, for errors that point into it.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// An error at the start of `span` (the file's start without one).
    pub(super) fn at(&self, span: Option<Range<usize>>, message: String) -> Error {
        let (line, column) = line_col(self.text, span.map(|s| s.start).unwrap_or(0));
        Error::Config {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// A list of exactly two numbers.
    pub(super) fn pair(&self, list: &Spanned<Vec<u16>>, what: &str) -> Result<[u16; 2]> {
        match list.get_ref()[..] {
            [a, b] => Ok([a, b]),
            ref other => Err(self.at(
                Some(list.span()),
                format!("{what} must list exactly two numbers, got {}", other.len()),
            )),
        }
    }

    /// A duration within the bounds of its key (the README's table), or
    /// `default` when it is not set.
    pub(super) fn bounded(
        &self,
        d: Option<Spanned<HumanDuration>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
        let Some(d) = d else { return Ok(default) };
        let (min, max) = duration_bounds(key);
        let value = d.get_ref().0;
        if value < min || value > max {
            return Err(self.at(
                Some(d.span()),
                format!(
                    "{key} must be between {} and {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                ),
            ));
        }
        Ok(value)
    }

    fn name(&self, name: &Spanned<String>) -> Result<String> {
        let text = name.get_ref();
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.at(
                Some(name.span()),
                format!("invalid name {text:?}: expected letters, digits, '_' or '-'"),
            ));
        }
        Ok(text.clone())
    }

    /// `shared` or `cache` (`key`): paths relative to a release, each
    /// inside it, none inside another nor inside one of `taken`; a
    /// trailing `/` makes it a folder.
    fn release_paths(
        &self,
        key: &str,
        items: Option<Vec<Spanned<String>>>,
        taken: &[Shared],
    ) -> Result<Vec<Shared>> {
        let mut out: Vec<Shared> = Vec::new();
        for item in items.unwrap_or_default() {
            let text = item.get_ref();
            let path = text.trim_end_matches('/');
            let bad = path.is_empty()
                || path.starts_with('/')
                || path.chars().any(|c| c.is_control() || c == '\\')
                || path.split('/').any(|part| matches!(part, "" | "." | ".."));
            if bad {
                return Err(self.at(
                    Some(item.span()),
                    format!("{key} path {text:?} must stay inside the release: a relative path without `.`, `..` or empty parts, like \"uploads/\" or \".env\""),
                ));
            }
            let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if let Some(other) = out
                .iter()
                .chain(taken)
                .find(|o| inside(path, &o.path) || inside(&o.path, path))
            {
                return Err(self.at(
                    Some(item.span()),
                    format!(
                        "{key} path {text:?} overlaps {:?}: name each path once, in `shared` or `cache`",
                        other.path
                    ),
                ));
            }
            out.push(Shared {
                path: path.to_string(),
                dir: text.ends_with('/'),
            });
        }
        Ok(out)
    }

    fn ports(&self, ports: Option<&Spanned<Vec<u16>>>) -> Result<[u16; 2]> {
        let Some(p) = ports else {
            return Ok([3001, 3002]);
        };
        let [a, b] = self.pair(p, "ports (slot a, slot b)")?;
        if a == b {
            return Err(self.at(
                Some(p.span()),
                format!("the two slot ports must differ, both are {a}"),
            ));
        }
        if a == 0 || b == 0 {
            return Err(self.at(Some(p.span()), "port 0 is not a usable slot port".into()));
        }
        Ok([a, b])
    }

    fn env(&self, raw: BTreeMap<Spanned<String>, String>) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for (key, value) in raw {
            let name = key.get_ref().as_str();
            // zdd's names, now and to come, as for the env file.
            if name == "PORT" || name.starts_with("ZDD_") {
                return Err(self.at(
                    Some(key.span()),
                    format!(
                        "{} is set by zdd itself and cannot be set in [env]",
                        key.get_ref()
                    ),
                ));
            }
            let name = key.get_ref();
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(self.at(
                    Some(key.span()),
                    format!("[env] name {name:?} cannot be an environment variable name (empty, or holds '=' or NUL)"),
                ));
            }
            if value.contains('\0') {
                return Err(self.at(
                    Some(key.span()),
                    format!("[env] {name} holds a NUL character, which no environment variable can hold"),
                ));
            }
            env.insert(key.into_inner(), value);
        }
        Ok(env)
    }
}

impl Config {
    /// Parse config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let src = Source { path, text };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| src.at(e.span(), e.message().trim().to_string()))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let name = src.name(&raw.name)?;
        let ports = src.ports(raw.ports.as_ref())?;
        if raw.start.get_ref().trim().is_empty() {
            return Err(src.at(Some(raw.start.span()), "`start` must not be empty".into()));
        }
        if let Err(why) = one_command(raw.start.get_ref()) {
            return Err(src.at(Some(raw.start.span()), why));
        }
        let user = match &raw.user {
            None => None,
            Some(u) => Some(resolve_user(u.get_ref()).map_err(|m| src.at(Some(u.span()), m))?),
        };
        let health = src.health(raw.health.unwrap_or_default())?;
        let stop = src.stop(raw.stop.unwrap_or_default())?;
        let nginx = src.nginx(raw.nginx.unwrap_or_default(), &resolve)?;
        let env = src.env(raw.env.unwrap_or_default())?;
        let keeper = src.keeper(raw.keeper.unwrap_or_default())?;
        let hooks = raw.hooks.unwrap_or_default();
        let maintenance = src.maintenance(raw.maintenance.unwrap_or_default(), &resolve)?;
        let releases = src.releases(raw.releases.unwrap_or_default())?;
        let logs = src.logs(raw.logs.unwrap_or_default())?;
        let shared = src.release_paths("shared", raw.shared, &[])?;
        let cache = src.release_paths("cache", raw.cache, &shared)?;
        Ok(Config {
            path: path.to_path_buf(),
            name,
            repo: raw.repo.map(|r| resolve_repo(&r, &dir)),
            branch: raw.branch.unwrap_or_else(|| "main".into()),
            root: raw.root.as_deref().map(resolve).unwrap_or(dir.clone()),
            build: raw.build.filter(|b| !b.trim().is_empty()),
            shared,
            cache,
            env_file: raw.env_file.as_deref().map(resolve),
            start: raw.start.into_inner(),
            ports,
            user,
            health,
            stop,
            env,
            hooks: Hooks {
                after_checkout: hooks.after_checkout,
                before_start: hooks.before_start,
                verify: hooks.verify,
                after_swap: hooks.after_swap,
            },
            nginx,
            keeper,
            maintenance,
            releases,
            logs,
        })
    }
}

/// `start` runs as `sh -c "exec START"`: the app replaces the shell, so
/// `start` must be one command. Steps joined by `&&`, `||`, `;`, `|`, `&`
/// or a line break would run in the wrong order or not at all, and a
/// shell builtin first (`. venv/bin/activate`, `cd`, `export`) cannot be
/// exec'd. Quoted text and redirections (`2>&1`) are fine.
pub fn one_command(start: &str) -> Result<(), String> {
    let start = start.trim();
    const ADVICE: &str = "zdd runs it as `sh -c \"exec START\"`, so the app replaces the shell and gets zdd's signals; put the steps in a script and start that (ending in `exec …`), or run the program directly (a venv's `venv/bin/gunicorn …` needs no `activate`)";
    // The first word after any `NAME=value` and an `exec`.
    let command = &start[assignments_end(start)..];
    let command = command
        .strip_prefix("exec ")
        .unwrap_or(command)
        .trim_start();
    let first = command.split_whitespace().next().unwrap_or("");
    if matches!(
        first,
        "." | "source" | "cd" | "export" | "set" | "alias" | "unset"
    ) {
        return Err(format!(
            "`start` begins with the shell builtin `{first}`, which cannot be exec'd; {ADVICE}"
        ));
    }
    let mut quoting = Quoting::default();
    let chars: Vec<char> = start.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !quoting.plain(c) {
            continue;
        }
        match c {
            ';' | '|' | '\n' => {
                let op = match (c, chars.get(i + 1)) {
                    ('|', Some('|')) => "||".to_string(),
                    ('\n', _) => "a line break".to_string(),
                    (c, _) => c.to_string(),
                };
                return Err(format!(
                    "`start` must be one command, not several joined by {op}; {ADVICE}"
                ));
            }
            '&' => {
                // `2>&1`, `>&2`, `&>file` are redirections.
                let redirect =
                    i > 0 && matches!(chars[i - 1], '>' | '<') || chars.get(i + 1) == Some(&'>');
                if !redirect {
                    let op = if chars.get(i + 1) == Some(&'&') {
                        "&&"
                    } else {
                        "&"
                    };
                    return Err(format!(
                        "`start` must be one command, not several joined by {op}; {ADVICE}"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a command's characters stand in sh's quoting, fed one by one.
#[derive(Default)]
struct Quoting {
    single: bool,
    double: bool,
    escaped: bool,
}

impl Quoting {
    /// Feed `c`: whether it is shell syntax (outside quotes, not escaped,
    /// not a quote or backslash itself).
    fn plain(&mut self, c: char) -> bool {
        if self.escaped {
            self.escaped = false;
            return false;
        }
        match c {
            '\\' if !self.single => self.escaped = true,
            '\'' if !self.double => self.single = !self.single,
            '"' if !self.single => self.double = !self.double,
            _ => return !self.single && !self.double,
        }
        false
    }
}

/// Where the leading `NAME=value` words of a command end (byte offset of
/// the first other word, or the end): quotes and backslashes respected.
pub fn assignments_end(command: &str) -> usize {
    let mut at = 0;
    loop {
        let rest = &command[at..];
        let word_start = at + (rest.len() - rest.trim_start().len());
        let word = &command[word_start..];
        let name_len = word
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(word.len());
        let is_assignment = name_len > 0
            && !word.starts_with(|c: char| c.is_ascii_digit())
            && word[name_len..].starts_with('=');
        if !is_assignment {
            return word_start;
        }
        // Skip the word: up to unquoted whitespace.
        let mut quoting = Quoting::default();
        let end = word
            .char_indices()
            .find(|&(_, c)| quoting.plain(c) && c.is_whitespace())
            .map_or(command.len(), |(i, _)| word_start + i);
        if end == command.len() {
            return end;
        }
        at = end;
    }
}

/// Where and what: "line L, column C: MESSAGE" for a TOML error in `text`
/// (never an empty reason).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = match e.message().trim() {
        "" => e.to_string(),
        m => m.to_string(),
    };
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A local repo path is made absolute (relative to the config's folder);
/// URLs and `host:path` forms are left as they are.
fn resolve_repo(repo: &str, dir: &Path) -> String {
    let looks_remote = repo.contains("://")
        || repo
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/'));
    if looks_remote || Path::new(repo).is_absolute() {
        repo.to_string()
    } else {
        normalize(&dir.join(repo)).to_string_lossy().into_owned()
    }
}

/// Remove `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}
