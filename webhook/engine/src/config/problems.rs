//! Configuration problems: each says which file, where in it, what is wrong and what would
//! be accepted, so `check-config` can report every one of them at once.

use std::fmt;

/// One problem (or, with `warning`, one note) found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based line, when the YAML parser told us.
    pub line: Option<u64>,
    /// The place in the document, like `8CPU-32GB.resources.CPU` or `patches[2].patch[0]`.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.place.is_empty() {
            write!(f, ": {}", self.place)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects problems and warnings while a configuration is loaded.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn error(
        &mut self,
        file: &str,
        line: Option<u64>,
        place: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(Problem {
            file: file.to_string(),
            line,
            place: place.into(),
            message: message.into(),
        });
    }

    pub fn warn(
        &mut self,
        file: &str,
        line: Option<u64>,
        place: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings.push(Problem {
            file: file.to_string(),
            line,
            place: place.into(),
            message: message.into(),
        });
    }

    /// Record a YAML syntax or type error from the parser, with its location and `shape`,
    /// what the file is read as.
    pub fn yaml(&mut self, file: &str, err: &serde_saphyr::Error, shape: &str) {
        self.yaml_at(file, err, "", shape);
    }

    /// [`yaml`](Report::yaml), at a known `place` in the document.
    pub fn yaml_at(&mut self, file: &str, err: &serde_saphyr::Error, place: &str, shape: &str) {
        let line = err.location().map(|l| l.line());
        // The parser's own message can span lines with a source snippet; the first line says
        // it. Its advice on parser options is for programmers, not for the file's author.
        let text = err.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .trim_end_matches(", set DuplicateKeyPolicy in Options if acceptable")
            .to_string();
        self.error(file, line, place, format!("{first}; expected {shape}"));
    }
}

/// The dotted path of the mapping key whose value is at `line` and `column` (1-based) of a
/// YAML document, from the keys of the less indented lines above it and of the flow
/// mappings open on the line: `sidecar.metricsPort` for `metricsPort: 0` under `sidecar:`,
/// for `sidecar: {flush: {maxBytes: 0}}` `sidecar.flush.maxBytes`, and for a value or list
/// item on a line of its own, its key's. `None` when no key is found.
pub fn key_path_at(text: &str, line: u64, column: u64) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(usize::try_from(line).ok()?).collect();
    if lines.len() as u64 != line {
        return None;
    }
    let unquote = |k: &str| k.trim().trim_matches(['"', '\'']).to_string();
    // A block mapping's key on a line: its indentation and the key.
    let key_of = |l: &str| -> Option<(usize, String)> {
        let body = l.trim_start();
        if body.starts_with(['#', '-', '{', '[']) || body.is_empty() {
            return None;
        }
        let (key, _) = body.split_once(':')?;
        let key = unquote(key);
        (!key.is_empty() && !key.contains(' ')).then(|| (l.len() - body.len(), key))
    };
    let here = lines.last()?;
    let mut path: Vec<String> = Vec::new();
    let (mut indent, mut strictly) = (here.len() - here.trim_start().len(), false);
    if let Some((i, key)) = key_of(here) {
        // The flow mappings open before the column, after the line's own key.
        enum Level {
            Map(Option<String>),
            List,
        }
        let before: String = here
            .chars()
            .take(usize::try_from(column).ok()?.saturating_sub(1))
            .collect();
        let flow = before.split_once(':').map_or("", |(_, rest)| rest);
        let (mut levels, mut token, mut quote) = (Vec::new(), String::new(), None);
        for ch in flow.chars() {
            match (quote, ch) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => token.push(c),
                (None, '"' | '\'') => quote = Some(ch),
                (None, '{') => levels.push(Level::Map(None)),
                (None, '[') => levels.push(Level::List),
                (None, '}' | ']') => {
                    levels.pop();
                }
                (None, ':') => {
                    if let Some(Level::Map(k)) = levels.last_mut() {
                        *k = Some(unquote(&token));
                    }
                }
                (None, ',') => {
                    if let Some(Level::Map(k)) = levels.last_mut() {
                        *k = None;
                    }
                }
                (None, c) => token.push(c),
            }
            if matches!(ch, '{' | '[' | '}' | ']' | ':' | ',') && quote.is_none() {
                token.clear();
            }
        }
        path.extend(levels.into_iter().rev().filter_map(|l| match l {
            Level::Map(k) => k,
            Level::List => None,
        }));
        path.push(key);
        (indent, strictly) = (i, true);
    }
    // The keys above: strictly less indented than a key, no more than a value or list item
    // (`include:` may have its `- a` at its own indentation).
    for l in lines.iter().rev().skip(1) {
        if strictly && indent == 0 {
            break;
        }
        if let Some((i, key)) = key_of(l)
            && (i < indent || (!strictly && i <= indent))
        {
            path.push(key);
            (indent, strictly) = (i, true);
        }
    }
    (strictly && indent == 0).then(|| {
        path.reverse();
        path.join(".")
    })
}

#[cfg(test)]
mod tests {
    use super::key_path_at;

    #[test]
    fn key_paths_are_found_from_indentation() {
        let text = "# settings\nsidecar:\n  image: x\n\n  # the port\n  metricsPort: 0\n  flush:\n    maxAgeSeconds: soon\nbootstrap: {burst: -1, cacheSeconds: x}\nnamespaces:\n  include:\n  - a\n";
        let at = |line, column| key_path_at(text, line, column);
        assert_eq!(at(2, 1).as_deref(), Some("sidecar"));
        assert_eq!(at(6, 16).as_deref(), Some("sidecar.metricsPort"));
        assert_eq!(at(8, 20).as_deref(), Some("sidecar.flush.maxAgeSeconds"));
        assert_eq!(at(9, 20).as_deref(), Some("bootstrap.burst"));
        assert_eq!(at(9, 38).as_deref(), Some("bootstrap.cacheSeconds"));
        assert_eq!(
            at(12, 3).as_deref(),
            Some("namespaces.include"),
            "a list item"
        );
        assert_eq!(at(40, 1), None, "past the end");
        assert_eq!(at(1, 3), None, "a comment");
        let flow = "sidecar: {flush: {maxBytes: [1]}, \"name\": \"a:b,c\", resources: {cpu: [1]}}\nx:\n  y:\n    70000\n";
        let at = |line, column| key_path_at(flow, line, column);
        assert_eq!(at(1, 30).as_deref(), Some("sidecar.flush.maxBytes"));
        assert_eq!(at(1, 50).as_deref(), Some("sidecar.name"));
        assert_eq!(at(1, 72).as_deref(), Some("sidecar.resources.cpu"));
        assert_eq!(
            at(4, 5).as_deref(),
            Some("x.y"),
            "a value on the line after its key"
        );
    }
}

/// A configuration that was refused, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "configuration refused: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}
