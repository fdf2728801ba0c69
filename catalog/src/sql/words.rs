//! What the hand-written statement parsers (tasks in `schedule::parse`, `COPY INTO` and pipes in
//! `ingest::parse`) share: recognising a statement by its leading words, and a cursor over
//! sqlparser's own parser with keyword helpers, so names, strings and expressions follow the
//! same SQL rules as everything else. Each parser adds its own clauses to [`Words`].

use datafusion::sql::sqlparser::ast::ObjectName;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// `name` or `schema.name`, lower-cased unless quoted (resolved against the default schema later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub schema: Option<String>,
    pub name: String,
}

/// The leading words of `sql` (comments skipped), upper-cased, at most `n`.
pub(crate) fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return Vec::new() };
    tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(n)
        .map_while(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .collect()
}

/// A statement being parsed word by word.
pub(crate) struct Words<'a> {
    pub(crate) p: Parser<'a>,
}

impl<'a> Words<'a> {
    pub(crate) fn new(sql: &'a str) -> Result<Self, ParserError> {
        Ok(Self { p: Parser::new(&GenericDialect {}).try_with_sql(sql)? })
    }

    /// The next token as an unquoted keyword, upper-cased.
    pub(crate) fn peek_word(&self) -> Option<String> {
        match &self.p.peek_token_ref().token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    pub(crate) fn eat(&mut self, word: &str) -> bool {
        if self.peek_word().as_deref() == Some(word) {
            self.p.next_token();
            true
        } else {
            false
        }
    }

    pub(crate) fn expect(&mut self, word: &str) -> Result<(), ParserError> {
        if self.eat(word) {
            Ok(())
        } else {
            let found = self.p.peek_token();
            self.p.expected(word, found)
        }
    }

    /// Only semicolons may follow.
    pub(crate) fn end(&mut self) -> Result<(), ParserError> {
        while self.p.consume_token(&Token::SemiColon) {}
        let next = self.p.peek_token();
        if next.token == Token::EOF { Ok(()) } else { self.p.expected("end of statement", next) }
    }

    pub(crate) fn equals(&mut self) -> Result<(), ParserError> {
        self.p.expect_token(&Token::Eq).map(|_| ())
    }

    /// `IF NOT EXISTS` (`not` true) or `IF EXISTS`.
    pub(crate) fn if_clause(&mut self, not: bool) -> Result<bool, ParserError> {
        if !self.eat("IF") {
            return Ok(false);
        }
        if not {
            self.expect("NOT")?;
        }
        self.expect("EXISTS")?;
        Ok(true)
    }

    /// A `name` or `schema.name` of a `what` (task, pipe, table).
    pub(crate) fn name(&mut self, what: &str) -> Result<Name, ParserError> {
        let object: ObjectName = self.p.parse_object_name(false)?;
        let parts: Vec<String> = object
            .0
            .iter()
            .filter_map(|part| part.as_ident())
            .map(|i| if i.quote_style.is_some() { i.value.clone() } else { i.value.to_lowercase() })
            .collect();
        match parts.as_slice() {
            [name] => Ok(Name { schema: None, name: name.clone() }),
            [schema, name] => Ok(Name { schema: Some(schema.clone()), name: name.clone() }),
            _ => Err(ParserError::ParserError(format!("a {what} name is name or schema.name, not {object}"))),
        }
    }
}
