//! The configuration reference, generated from the clap declarations: the README's table is
//! this function's output (a test keeps them equal), so a flag, its env var, its TOML key and
//! its default are written exactly once.

use clap::Command;

/// The Markdown table of every setting of `serve`, `sql` and the cluster roles.
pub fn markdown(command: &Command) -> String {
    let mut out = String::from("| flag | env var | TOML key | default | meaning |\n|---|---|---|---|---|\n");
    let known = super::file::known_settings(command);
    let mut seen = Vec::new();
    for name in ["serve", "sql", "scheduler", "executor"] {
        let Some(mut sub) = command.find_subcommand(name).cloned() else { continue };
        sub.build();
        for arg in sub.get_arguments() {
            let id = arg.get_id().to_string();
            let Some(long) = arg.get_long() else { continue };
            if id == "help" || id == "version" || seen.contains(&id) {
                continue;
            }
            seen.push(id.clone());
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let (meaning, stated_default) = match help.rsplit_once(" [default: ") {
                Some((m, d)) => (m.to_string(), Some(d.trim_end_matches(']').to_string())),
                None => (help.clone(), None),
            };
            let default = match (arg.get_default_values(), stated_default) {
                _ if matches!(arg.get_action(), clap::ArgAction::SetTrue) => "off".to_string(),
                ([], Some(d)) => d,
                ([], None) => "none".to_string(),
                (values, _) => {
                    format!("`{}`", values.iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(","))
                }
            };
            let flag = if known_global(&id) { format!("`--{long}`") } else { format!("`--{long}` ({name})") };
            let env = arg.get_env().map_or("–".to_string(), |e| format!("`{}`", e.to_string_lossy()));
            let key = if id == "config" || !known.contains(&id) {
                "–".to_string()
            } else if let Some(rest) = id.strip_prefix("s3_") {
                format!("`[s3] {rest}`")
            } else if let Some(rest) = id.strip_prefix("http_sources_") {
                format!("`[http_sources] {rest}`")
            } else {
                format!("`{id}`")
            };
            let meaning = meaning.replace('\n', " ").replace('|', "\\|");
            out.push_str(&format!("| {flag} | {env} | {key} | {default} | {meaning} |\n"));
        }
    }
    out
}

/// Whether a setting belongs to every command (the warehouse settings) rather than to `serve`.
fn known_global(id: &str) -> bool {
    let mut probe = Command::new("probe");
    probe = <super::WarehouseArgs as clap::Args>::augment_args(probe);
    probe.get_arguments().any(|a| a.get_id() == id)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn readme_configuration_table_is_current() {
        let table = super::markdown(&crate::cli::Cli::command());
        // The run-time CARGO_MANIFEST_DIR names this checkout even if the binary was built in another.
        let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&manifest_dir).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            readme.contains(&table),
            "README's configuration table is out of date: paste the output of `streampulse config-reference`:\n{table}"
        );
    }
}
