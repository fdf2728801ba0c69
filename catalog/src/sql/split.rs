//! Splitting a script into statements, each with its own source text (stored verbatim for
//! external tables and views, and shown in errors).

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::error::{Error, Result};

/// Split SQL text at top-level semicolons using the SQL tokenizer (so `;` inside strings,
/// identifiers and comments does not split), returning each statement's text.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::invalid(format!("SQL syntax: {e}")))?;
    // Byte offset of each line start, to turn (line, column) into a byte offset.
    let mut line_starts = vec![0usize];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            line_starts.push(i + 1);
        }
    }
    let offset = |loc: Location| -> usize {
        let line_start = line_starts.get(loc.line.saturating_sub(1) as usize).copied().unwrap_or(sql.len());
        sql[line_start..]
            .char_indices()
            .nth(loc.column.saturating_sub(1) as usize)
            .map(|(i, _)| line_start + i)
            .unwrap_or(sql.len())
    };
    let mut parts = Vec::new();
    let mut start = 0usize;
    let mut has_content = false;
    for t in tokens {
        match t.token {
            Token::SemiColon => {
                let end = offset(t.span.start);
                if has_content {
                    parts.push(sql[start..end].trim().to_string());
                }
                start = end + 1;
                has_content = false;
            }
            Token::Whitespace(_) => {}
            _ => has_content = true,
        }
    }
    if has_content {
        parts.push(sql[start..].trim().to_string());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "SELECT ';' AS a; -- note; here\nCREATE VIEW \"x;y\" AS SELECT 1;\n\n  ;  SELECT 2";
        let parts = split_statements(sql).unwrap();
        assert_eq!(parts, vec!["SELECT ';' AS a", "-- note; here\nCREATE VIEW \"x;y\" AS SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn unicode_before_semicolon_keeps_offsets_right() {
        let parts = split_statements("SELECT 'héllo ☃'; SELECT 'ü'").unwrap();
        assert_eq!(parts, vec!["SELECT 'héllo ☃'", "SELECT 'ü'"]);
    }
}
