//! Arbitrary text in the files of a configuration directory: loaded or refused with its
//! problems, never a panic; a configuration that loads can shape a pod. The input is the
//! files' texts joined by lines of `=====`, in the order instance_types.yaml, patches.yaml,
//! webhook.yaml, version; a missing part is an absent file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayshape_engine::config::{Config, Sources};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split("\n=====\n").map(str::to_string);
    let sources = Sources {
        instance_types: parts.next(),
        patches: parts.next(),
        settings: parts.next(),
        version: parts.next(),
        bootstrap_ca: None,
    };
    if let Ok(cfg) = Config::from_sources(&sources) {
        let name = cfg
            .instance_types
            .keys()
            .next()
            .cloned()
            .unwrap_or_default();
        let pod = rayshape_engine::json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"ray.io/node-type": "worker", "rayshape.io/instance-type": name}},
            "spec": {"containers": [{"name": "ray", "image": "rayproject/ray"}]}});
        let _ = rayshape_engine::shape(&pod, Some("default"), &cfg);
    }
});
