//! `--filter`: choosing scenarios by name and tag.
//!
//! An expression is whitespace-separated terms that must all match (AND):
//! - `tag:T` — the scenario has tag `T` (exact, case-insensitive);
//! - `name:P` or a bare `P` — a glob on the name when `P` has `*` or `?`, else a substring;
//! - `!TERM` — the term must not match.
//!
//! Several `--filter` options select the union (OR). No filter selects everything.
//! Example: `--filter 'tag:lockout !tag:slow' --filter 'help-desk-*'`.

use super::model::Scenario;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty filter expression")]
    Empty,
    #[error("filter term `{0}`: nothing after the prefix")]
    EmptyTerm(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Tag(String),
    Name(String),
    Not(Box<Term>),
}

/// One parsed `--filter` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

impl Filter {
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let terms = expr
            .split_whitespace()
            .map(parse_term)
            .collect::<Result<Vec<_>, _>>()?;
        if terms.is_empty() {
            return Err(FilterError::Empty);
        }
        Ok(Filter { terms })
    }

    pub fn matches(&self, scenario: &Scenario) -> bool {
        self.terms.iter().all(|t| term_matches(t, scenario))
    }
}

/// The scenarios any of `filters` selects (all of them when `filters` is empty), in order.
pub fn select<'a>(scenarios: &'a [Scenario], filters: &[Filter]) -> Vec<&'a Scenario> {
    scenarios
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| f.matches(s)))
        .collect()
}

fn parse_term(word: &str) -> Result<Term, FilterError> {
    if let Some(rest) = word.strip_prefix('!') {
        return Ok(Term::Not(Box::new(parse_term(rest)?)));
    }
    let (term, value) = if let Some(tag) = word.strip_prefix("tag:") {
        (Term::Tag(tag.to_ascii_lowercase()), tag)
    } else if let Some(name) = word.strip_prefix("name:") {
        (Term::Name(name.to_string()), name)
    } else {
        (Term::Name(word.to_string()), word)
    };
    if value.is_empty() {
        return Err(FilterError::EmptyTerm(word.to_string()));
    }
    Ok(term)
}

fn term_matches(term: &Term, s: &Scenario) -> bool {
    match term {
        Term::Tag(tag) => s.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)),
        Term::Name(pattern) if pattern.contains(['*', '?']) => {
            glob(pattern.as_bytes(), s.name.as_bytes())
        }
        Term::Name(part) => s.name.contains(part.as_str()),
        Term::Not(inner) => !term_matches(inner, s),
    }
}

/// `*` any run, `?` one byte; iterative with one backtrack point, so linear-ish and no
/// recursion on hostile input.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob(b"lost-*", b"lost-pin-locked-out"));
        assert!(glob(b"*-pin-*", b"lost-pin-locked-out"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"abbc"));
        assert!(!glob(b"lost-*", b"firmware"));
        assert!(glob(b"*", b""));
    }
}
