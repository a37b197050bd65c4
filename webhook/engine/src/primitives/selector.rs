//! Kubernetes label-selector syntax, evaluated over a pod's labels and annotations.
//!
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; a comma means AND.
//! The Anyscale operator evaluates the same syntax over annotations, so a key is looked up
//! in the labels first and then in the annotations: rules written for either work.

use rayshape_json::{Map, Value};
use thiserror::Error;

/// A parsed selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A selector that does not parse, with the column where parsing stopped.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "selector {input:?}: {reason} at column {column}; expected requirements like `k=v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k` or `!k`, joined by commas"
)]
pub struct SelectorError {
    input: String,
    reason: String,
    column: usize,
}

impl std::fmt::Display for Selector {
    /// The selector in its own syntax; an empty selector is written as an empty string.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
            }
        }
        Ok(())
    }
}

impl Selector {
    /// The selector that matches everything (an empty or absent selector).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Parser { s: input, pos: 0 }.selector()
    }

    /// Whether the object with these labels and annotations is selected.
    pub fn matches(&self, labels: Option<&Map>, annotations: Option<&Map>) -> bool {
        let get = |k: &str| -> Option<&str> {
            labels
                .and_then(|m| m.get(k))
                .or_else(|| annotations.and_then(|m| m.get(k)))
                .and_then(Value::as_str)
        };
        self.reqs.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        })
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            input: self.s.to_string(),
            reason: reason.into(),
            column: self.pos + 1,
        })
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// A key or value: everything up to whitespace or an operator character.
    fn word(&mut self) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!'))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.s[start..self.pos]
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        self.skip_ws();
        if self.rest().is_empty() {
            return Ok(Selector { reqs });
        }
        loop {
            reqs.push(self.requirement()?);
            self.skip_ws();
            if self.rest().is_empty() {
                return Ok(Selector { reqs });
            }
            if !self.eat(",") {
                return self.fail("expected `,` between requirements");
            }
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let k = self.word().to_string();
        if k.is_empty() {
            return self.fail("expected a key");
        }
        if !valid_key(&k) {
            return self.fail(format!("{k:?} is not a valid label or annotation key"));
        }
        Ok(k)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.eat("!") {
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        if self.eat("==") || self.eat("=") {
            self.skip_ws();
            let v = self.word().to_string();
            return Ok(Requirement::In(key, vec![v]));
        }
        if self.eat("!=") {
            self.skip_ws();
            let v = self.word().to_string();
            return Ok(Requirement::NotIn(key, vec![v]));
        }
        let save = self.pos;
        match self.word() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            "" => Ok(Requirement::Exists(key)),
            other => {
                let other = other.to_string();
                self.pos = save;
                self.fail(format!("unexpected {other:?} after key {key:?}"))
            }
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_ws();
        if !self.eat("(") {
            return self.fail("expected `(` to start a value list");
        }
        let mut vals = Vec::new();
        loop {
            self.skip_ws();
            let v = self.word().to_string();
            vals.push(v);
            self.skip_ws();
            if self.eat(")") {
                break;
            }
            if !self.eat(",") {
                return self.fail("expected `,` or `)` in a value list");
            }
        }
        Ok(vals)
    }
}

/// `[prefix/]name` with the characters Kubernetes allows in label and annotation keys.
fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && k.matches('/').count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayshape_json::json;

    fn sel(s: &str, labels: Value, annotations: Value) -> bool {
        Selector::parse(s)
            .unwrap()
            .matches(labels.as_object(), annotations.as_object())
    }

    #[test]
    fn set_based_and_equality() {
        let l = json!({"rayshape.io/market-type": "SPOT", "tier": "a"});
        assert!(sel(
            "rayshape.io/market-type in (SPOT, ON_DEMAND)",
            l.clone(),
            json!({})
        ));
        assert!(!sel(
            "rayshape.io/market-type in (ON_DEMAND)",
            l.clone(),
            json!({})
        ));
        assert!(sel(
            "rayshape.io/market-type notin (ON_DEMAND)",
            l.clone(),
            json!({})
        ));
        assert!(
            sel("missing notin (x)", l.clone(), json!({})),
            "notin holds when absent"
        );
        assert!(sel("tier=a, rayshape.io/market-type", l.clone(), json!({})));
        assert!(sel("tier==a", l.clone(), json!({})));
        assert!(!sel("tier!=a", l.clone(), json!({})));
        assert!(sel("!rayshape.io/zone", l.clone(), json!({})));
        assert!(sel("", l.clone(), json!({})));
    }

    #[test]
    fn annotations_are_seen() {
        assert!(sel(
            "anyscale.com/zone",
            json!({}),
            json!({"anyscale.com/zone": "us-west-2a"})
        ));
        assert!(sel(
            "anyscale.com/zone=us-west-2a",
            json!({}),
            json!({"anyscale.com/zone": "us-west-2a"})
        ));
    }

    #[test]
    fn errors_name_the_column() {
        let e = Selector::parse("a in b").unwrap_err().to_string();
        assert!(e.contains("column 6") && e.contains("`(`"), "{e}");
        assert!(Selector::parse("a b").is_err());
        assert!(Selector::parse("a in (x").is_err());
        assert!(Selector::parse(",").is_err());
        assert!(Selector::parse("a/b/c").is_err());
    }
}
