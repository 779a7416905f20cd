//! `env_file`: the dotenv file whose variables every app zdd starts gets
//! (read by zdd for builds, hooks and rehearsals, and by the app's keeper
//! at each start of the app), checked like the config: only root or zdd's
//! user may have written it.

use std::path::Path;

use crate::error::{Error, Result};

/// The `env_file`'s variables, in order: dotenv lines (`dotenvy`) from a
/// file only root or zdd's user could have written. A line it cannot read
/// is an error naming file:line; `PORT` and `ZDD_*` are zdd's to set.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = crate::root::read_trusted_input(path, "env_file")?;
    let line_of = |needle: &str| {
        text.find(needle)
            .map_or(0, |at| text[..at].matches('\n').count() + 1)
    };
    let mut vars = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((name, _)) if name == "PORT" || name.starts_with("ZDD_") => {
                let line = text.lines().position(|l| {
                    let l = l.trim_start();
                    let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
                    l.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                return Err(Error::Usage(format!(
                    "{}:{}: {name} is set by zdd for every app; remove it from the env file",
                    path.display(),
                    line.map_or(0, |i| i + 1)
                )));
            }
            Ok(var) => vars.push(var),
            Err(dotenvy::Error::LineParse(line, at)) => {
                return Err(Error::Usage(format!(
                    "{}:{}: not a NAME=value line (at character {}): {}",
                    path.display(),
                    line_of(&line),
                    at + 1,
                    crate::text::escape(line.lines().next().unwrap_or(""))
                )))
            }
            Err(e) => return Err(Error::Usage(format!("{}: {e}", path.display()))),
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_env_file_is_read_and_a_bad_line_named() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("shop.env");
        std::fs::write(
            &path,
            "# secrets\nDATABASE_URL=postgres://db/shop\n\nGREETING=\"hello world\"\nexport MODE=fast\n",
        )
        .unwrap();
        assert_eq!(
            super::read_env_file(&path).unwrap(),
            [
                ("DATABASE_URL".to_string(), "postgres://db/shop".to_string()),
                ("GREETING".into(), "hello world".into()),
                ("MODE".into(), "fast".into()),
            ]
        );
        std::fs::write(&path, "A=1\nB=2\nthis is not a line\n").unwrap();
        let e = super::read_env_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:3: not a NAME=value line", path.display())),
            "{e}"
        );
        std::fs::write(&path, "DB_PORT=5432\nPORT=80\n").unwrap();
        let e = super::read_env_file(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: PORT is set by zdd for every app; remove it from the env file",
                path.display()
            )
        );
    }
}
