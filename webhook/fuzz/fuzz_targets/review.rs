//! Arbitrary bytes where the API server sends an AdmissionReview, and where `mutate` reads
//! its input: answered or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayshape_engine::config::Config;
use std::sync::LazyLock;

static CONFIG: LazyLock<Config> = LazyLock::new(Config::builtin);

fuzz_target!(|data: &[u8]| {
    // The server's path: JSON, then a decision and its response.
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(d) = rayshape_engine::decide(&doc, &CONFIG)
    {
        let _ = serde_json::to_vec(&d.response());
    }
    // The preview's path: JSON or YAML documents, each shaped.
    if let Ok((docs, _)) = rayshape_engine::decode::parse_documents(data) {
        for doc in &docs {
            let _ = rayshape_engine::shape(doc, Some("default"), &CONFIG);
            let _ = rayshape_engine::explain::explain(doc, Some("default"), &CONFIG);
        }
    }
});
