//! Arbitrary bytes where the API server sends an AdmissionReview, and where `mutate` reads
//! its input: answered or refused, never a panic; and the server's parser reads them as
//! serde_json does (the same value, or the same error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayshape_engine::config::Config;
use std::sync::LazyLock;

static CONFIG: LazyLock<Config> = LazyLock::new(Config::builtin);

fuzz_target!(|data: &[u8]| {
    // The server's path: JSON, then a decision and its response.
    let parsed = rayshape_engine::decode::parse_review(data);
    let ours = parsed.as_ref().map(|v| v.to_string()).map_err(|e| e.to_string());
    let theirs = serde_json::from_slice::<serde_json::Value>(data)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string());
    assert_eq!(ours, theirs, "parse_review and serde_json differ");
    if let Ok(doc) = parsed
        && let Ok(d) = rayshape_engine::decide(&doc, &CONFIG)
    {
        let _ = d.response_bytes();
    }
    // The preview's path: JSON or YAML documents, each shaped.
    if let Ok((docs, _)) = rayshape_engine::decode::parse_documents(data) {
        for doc in &docs {
            let _ = rayshape_engine::shape(doc, Some("default"), &CONFIG);
            let _ = rayshape_engine::explain::explain(doc, Some("default"), &CONFIG);
        }
    }
});
