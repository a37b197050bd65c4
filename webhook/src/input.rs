//! Decoding what users and the API server send: JSON or YAML, one document or a stream.

use serde_json::Value;
use thiserror::Error;

/// The API server's limit on a request body; nothing larger can be a real object.
pub const MAX_INPUT: usize = 3 * 1024 * 1024;

/// The syntax the input came in, so output can use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Error)]
pub enum InputError {
    #[error(
        "input is {0} bytes; the limit is {MAX_INPUT} bytes (3 MiB), the API server's own limit on an object"
    )]
    TooLarge(usize),
    #[error("input is not UTF-8 text: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("input is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("input is not valid YAML: {0}")]
    Yaml(String),
    #[error("input holds no document; expected a Pod or an AdmissionReview")]
    Empty,
    #[error("document {index} is not an object with apiVersion and kind (found {found})")]
    NotAnObject { index: usize, found: &'static str },
}

/// Parse one or more documents. A `kind: List` is expanded into its items.
pub fn parse_documents(bytes: &[u8]) -> Result<(Vec<Value>, Format), InputError> {
    if bytes.len() > MAX_INPUT {
        return Err(InputError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes)?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let (docs, format) = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let docs = serde_json::Deserializer::from_str(trimmed)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()?;
        (docs, Format::Json)
    } else {
        let docs: Vec<Value> = serde_saphyr::from_multiple(trimmed).map_err(|e| {
            InputError::Yaml(
                e.to_string()
                    .lines()
                    .next()
                    .unwrap_or("parse error")
                    .to_string(),
            )
        })?;
        (docs, Format::Yaml)
    };
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(items) = m.get("items").and_then(Value::as_array) {
                    out.extend(items.iter().cloned());
                }
            }
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return Err(InputError::Empty);
    }
    for (index, d) in out.iter().enumerate() {
        let found = match d {
            Value::Object(_) => continue,
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
        };
        return Err(InputError::NotAnObject { index, found });
    }
    Ok((out, format))
}

/// Render documents in the given format (YAML streams are separated by `---`).
pub fn render(docs: &[Value], format: Format) -> String {
    match format {
        Format::Json => docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("JSON values serialise") + "\n")
            .collect(),
        Format::Yaml => docs
            .iter()
            .map(|d| serde_saphyr::to_string(d).unwrap_or_else(|_| d.to_string()))
            .collect::<Vec<_>>()
            .join("---\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_yaml_streams_and_lists() {
        let (d, f) = parse_documents(b"{\"kind\":\"Pod\"}").unwrap();
        assert_eq!((d.len(), f), (1, Format::Json));
        let (d, f) = parse_documents(b"kind: Pod\n---\nkind: Pod\n---\n").unwrap();
        assert_eq!((d.len(), f), (2, Format::Yaml));
        let (d, _) = parse_documents(b"kind: List\nitems:\n- kind: Pod\n- kind: Pod\n").unwrap();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(matches!(
            parse_documents(&vec![b' '; MAX_INPUT + 1]),
            Err(InputError::TooLarge(_))
        ));
        assert!(matches!(
            parse_documents(b"{\"kind\":"),
            Err(InputError::Json(_))
        ));
        assert!(matches!(
            parse_documents(b"a: [1,"),
            Err(InputError::Yaml(_))
        ));
        assert!(matches!(parse_documents(b""), Err(InputError::Empty)));
        assert!(matches!(
            parse_documents(b"just text"),
            Err(InputError::NotAnObject { .. })
        ));
        assert!(matches!(
            parse_documents(&[0xff, 0xfe]),
            Err(InputError::NotUtf8(_))
        ));
    }

    #[test]
    fn yaml_output_round_trips_tricky_strings() {
        let v: Value = serde_json::json!({"kind": "Pod", "a": "true", "b": "1", "c": "on", "d": "null", "e": "8Gi", "f": "", "g": "0x10", "h": "- x", "i": "a: b"});
        let text = render(std::slice::from_ref(&v), Format::Yaml);
        let (back, _) = parse_documents(text.as_bytes()).unwrap();
        assert_eq!(back[0], v, "{text}");
    }
}
