//! The TOML configuration file, merged into the command line in one place.
//!
//! The file may hold any setting of `serve` by its name (`memory_limit = "8GiB"`, S3 settings
//! in an `[s3]` table). A value from the file is used only where neither a flag nor an
//! environment variable gave one: the merge asks clap where each value came from
//! ([`clap::parser::ValueSource`]) and adds `--key=value` for those that came from a default,
//! so the file's values are parsed and checked exactly like flags (same types, same messages).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Settings that cannot come from the file: the file itself, and clap's own flags.
const NOT_FROM_FILE: &[&str] = &["config", "help", "version"];

/// `argv` with the settings of the `--config` file (if any) that flags and env vars left at
/// their default. Errors name the file and the key.
pub fn merge(command: &Command, matches: &ArgMatches, mut argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut path = vec![command.clone()];
    let mut leaf = matches;
    while let Some((name, sub)) = leaf.subcommand() {
        let Some(next) = path.last().and_then(|c| c.find_subcommand(name)).cloned() else { break };
        path.push(next);
        leaf = sub;
    }
    let Ok(Some(file)) = leaf.try_get_one::<PathBuf>("config") else {
        return Ok(argv);
    };
    let known = known_settings(command);
    for (key, value) in read(file)? {
        if !known.contains(&key) {
            return Err(format!("config {}: unknown setting '{key}'", file.display()));
        }
        // A setting of another command (e.g. `listen` for `sql`) is not this one's business.
        if leaf.try_contains_id(&key).is_err() {
            continue;
        }
        if matches!(leaf.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let Some(arg) = path.iter().rev().flat_map(|c| c.get_arguments()).find(|a| a.get_id() == key.as_str()) else {
            continue;
        };
        let flag = format!("--{}", arg.get_long().unwrap_or(&key));
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value.as_str() {
                "true" => argv.push(flag.into()),
                "false" => {}
                other => return Err(format!("config {}: {key} must be true or false, got {other}", file.display())),
            }
        } else {
            argv.push(format!("{flag}={value}").into());
        }
    }
    Ok(argv)
}

/// Every setting's id (the TOML key): the arguments of `serve` and of the cluster roles.
pub fn known_settings(command: &Command) -> Vec<String> {
    let mut known: Vec<String> = Vec::new();
    // `serve` has the warehouse settings and its own; the cluster roles add theirs (their ids
    // are their own: `scheduler_listen`, `executor_listen`, ...).
    for name in ["serve", "scheduler", "executor"] {
        let mut sub = command.find_subcommand(name).cloned().unwrap_or_else(|| command.clone());
        sub.build();
        for id in sub.get_arguments().map(|a| a.get_id().to_string()) {
            if !NOT_FROM_FILE.contains(&id.as_str()) && !known.contains(&id) {
                known.push(id);
            }
        }
    }
    known
}

/// The file's settings as `(key, value text)`, `[s3] endpoint` as `s3_endpoint`.
fn read(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => {
                for (sub, value) in section {
                    out.push((format!("{key}_{sub}"), scalar(path, &sub, value)?));
                }
            }
            value => out.push((key.clone(), scalar(path, &key, value)?)),
        }
    }
    Ok(out)
}

fn scalar(path: &Path, key: &str, value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        // Lists (`[http_sources] allow = ["https://a/", "https://b/"]`) become comma-separated.
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(format!("config {}: {key} must list strings, got {}", path.display(), other.type_str())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        other => Err(format!(
            "config {}: {key} must be a string, number, boolean or list of strings, got {}",
            path.display(),
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::MemorySize;

    fn leaf(matches: &ArgMatches) -> &ArgMatches {
        let mut m = matches;
        while let Some((_, sub)) = m.subcommand() {
            m = sub;
        }
        m
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("streampulse.toml");
        std::fs::write(
            &path,
            "memory_limit = \"2GiB\"\nwarehouse = \"/tmp/wh\"\nlisten = \"0.0.0.0:1\"\n[s3]\nregion = \"eu\"\n\
             [http_sources]\nallow = [\"http://a.example/v1/\", \"https://b.example/\"]\n",
        )
        .unwrap();
        let command = crate::cli::Cli::command();
        let argv: Vec<OsString> =
            ["streampulse", "sql", "--config", path.to_str().unwrap(), "--memory-limit", "1GiB", "-e", "SELECT 1"]
                .iter()
                .map(OsString::from)
                .collect();
        let matches = command.clone().try_get_matches_from(&argv).unwrap();
        let merged = merge(&command, &matches, argv).unwrap();
        let matches = command.try_get_matches_from(&merged).unwrap();
        let m = leaf(&matches);
        assert_eq!(m.get_one::<MemorySize>("memory_limit").unwrap().to_string(), "1GiB");
        assert_eq!(m.get_one::<String>("warehouse").unwrap(), "/tmp/wh");
        assert_eq!(m.get_one::<String>("s3_region").map(String::as_str), Some("eu"));
        let allow: Vec<&String> = m.get_many::<String>("http_sources_allow").unwrap().collect();
        assert_eq!(allow, ["http://a.example/v1/", "https://b.example/"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let command = crate::cli::Cli::command();
        let argv: Vec<OsString> = ["streampulse", "sql", "--config", path.to_str().unwrap(), "-e", "SELECT 1"]
            .iter()
            .map(OsString::from)
            .collect();
        let matches = command.clone().try_get_matches_from(&argv).unwrap();
        std::fs::write(&path, "nonsense_key = 1\n").unwrap();
        let err = merge(&command, &matches, argv.clone()).unwrap_err();
        assert!(err.contains("unknown setting 'nonsense_key'") && err.contains("bad.toml"), "{err}");
        std::fs::write(&path, "memory_limit = \"lots\"\n").unwrap();
        let merged = merge(&command, &matches, argv).unwrap();
        let err = command.try_get_matches_from(&merged).unwrap_err().to_string();
        assert!(err.contains("invalid size 'lots'"), "{err}");
    }
}
