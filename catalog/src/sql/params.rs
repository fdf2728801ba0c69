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
pub fn substitute_params(script: &str, params: &[(String, String)]) -> Result<String> {
    let mut out = script.to_string();
    for (name, value) in params {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(start) = out.find("${") {
        let name: String = out[start + 2..].chars().take_while(|c| *c != '}').collect();
        return Err(Error::invalid(format!("the script uses ${{{name}}}: give it with --param {name}=...")));
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
    }
}
