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
        self.error(file, line, "", format!("{first}; expected {shape}"));
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
