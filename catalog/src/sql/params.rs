//! `${name}` parameters in scripts: the pipelines take their run date or month this way, from
//! the CLI's `--param` and from the scheduler alike.

use crate::error::{Error, Result};

/// Split a `NAME=VALUE` argument.
pub fn parse_param(text: &str) -> Result<(String, String)> {
    let (name, value) =
        text.split_once('=').ok_or_else(|| Error::invalid(format!("--param {text}: expected NAME=VALUE")))?;
    Ok((name.trim().to_string(), value.to_string()))
}

/// Replace `${name}` with each parameter's value; a `${...}` left over is an error that names it.
/// Text between `$$` quotes (a task's body) is left alone: its `${...}` are the task's own
/// parameters, filled in each time the task runs.
pub fn substitute_params(script: &str, params: &[(String, String)]) -> Result<String> {
    let pieces: Vec<&str> = script.split("$$").collect();
    // An odd number of `$$` is not a quoted body: substitute everywhere.
    let quoted = pieces.len() % 2 == 1;
    let mut out = String::with_capacity(script.len());
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            out.push_str("$$");
        }
        if quoted && i % 2 == 1 {
            out.push_str(piece);
            continue;
        }
        let mut text = piece.to_string();
        for (name, value) in params {
            text = text.replace(&format!("${{{name}}}"), value);
        }
        if let Some(start) = text.find("${") {
            let name: String = text[start + 2..].chars().take_while(|c| *c != '}').collect();
            return Err(Error::invalid(format!("the script uses ${{{name}}}: give it with --param {name}=...")));
        }
        out.push_str(&text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_substituted_and_missing_ones_named() {
        let p = vec![parse_param("run_date=2026-10-05").unwrap(), parse_param("data=/tmp/d").unwrap()];
        assert_eq!(
            substitute_params("SELECT '${run_date}' FROM '${data}/x'", &p).unwrap(),
            "SELECT '2026-10-05' FROM '/tmp/d/x'"
        );
        assert!(substitute_params("SELECT ${month}", &p).unwrap_err().to_string().contains("--param month="));
        assert!(parse_param("novalue").is_err());
        // A task body's parameters are the task's, not the script's.
        let task = "CREATE TASK t AS $$ SELECT '${run_date}' $$; SELECT '${data}'";
        assert_eq!(
            substitute_params(task, &p).unwrap(),
            "CREATE TASK t AS $$ SELECT '${run_date}' $$; SELECT '/tmp/d'"
        );
    }
}
