//! The first stage: decoding what the API server and users send. An AdmissionReview's
//! request, or for the preview, JSON or YAML documents, one or a stream.

use crate::primitives::pod;
use rayshape_json::Value;
use thiserror::Error;

/// A review that cannot be answered (HTTP 400; exit 2 in the preview).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("apiVersion is {0:?}; expected admission.k8s.io/v1")]
    ApiVersion(String),
    #[error("kind is {0:?}; expected AdmissionReview")]
    Kind(String),
    #[error("`request` is missing or not an object")]
    NoRequest,
    #[error("`request.uid` is missing or not a string")]
    NoUid,
    #[error("`request.object` is missing or not an object, for a {0} request")]
    NoObject(String),
}

/// The parts of an AdmissionReview's request the engine reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub uid: &'a str,
    pub operation: &'a str,
    /// `Kind` of the object, as the request names it (or the object itself does).
    pub kind: &'a str,
    /// The request's namespace: the object may lack it on CREATE.
    pub namespace: &'a str,
    /// `metadata.name`, often empty on CREATE (the API server names the pod afterwards).
    pub name: &'a str,
    pub generate_name: &'a str,
    pub sub_resource: &'a str,
    pub dry_run: bool,
    pub object: Option<&'a Value>,
    /// The stored object, on UPDATE.
    pub old_object: Option<&'a Value>,
}

impl Request<'_> {
    /// Pods are shaped on CREATE only: an admitted pod's spec is immutable, and KubeRay
    /// updates live pods (labels, annotations), which must go through untouched. KubeRay's
    /// own objects are shaped on CREATE and UPDATE (sizing is idempotent, so the
    /// autoscaler's `replicas` updates pass unchanged). Subresources never are.
    pub fn is_shaped(&self) -> bool {
        let ray_crd = matches!(self.kind, "RayCluster" | "RayJob" | "RayService");
        self.sub_resource.is_empty()
            && (self.operation == "CREATE" || (ray_crd && self.operation == "UPDATE"))
    }
}

/// Decode an `admission.k8s.io/v1` AdmissionReview.
pub fn review(review: &Value) -> Result<Request<'_>, ReviewError> {
    let api = pod::field(review, "apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api != "admission.k8s.io/v1" {
        return Err(ReviewError::ApiVersion(api.into()));
    }
    let kind = pod::field(review, "kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind.into()));
    }
    let req = pod::field(review, "request")
        .filter(|r| r.is_object())
        .ok_or(ReviewError::NoRequest)?;
    let uid = pod::field(req, "uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NoUid)?;
    let text = |p: &[&str]| pod::at(req, p).and_then(Value::as_str).unwrap_or("");
    let object = pod::field(req, "object").filter(|o| o.is_object());
    let in_object = |p: &[&str]| object.and_then(|o| pod::at(o, p)).and_then(Value::as_str);
    Ok(Request {
        uid,
        operation: text(&["operation"]),
        kind: pod::at(req, &["kind", "kind"])
            .and_then(Value::as_str)
            .or_else(|| in_object(&["kind"]))
            .unwrap_or(""),
        namespace: text(&["namespace"]),
        name: in_object(&["metadata", "name"]).unwrap_or_else(|| text(&["name"])),
        generate_name: in_object(&["metadata", "generateName"]).unwrap_or(""),
        sub_resource: text(&["subResource"]),
        dry_run: pod::field(req, "dryRun")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        object,
        old_object: pod::field(req, "oldObject").filter(|o| o.is_object()),
    })
}

/// Parse an AdmissionReview's body for [`crate::decide`]: the same value, or the same
/// error, as `serde_json::from_slice`, built by [`rayshape_json`]'s one-pass parser (an
/// admission's cost was mostly this parse), with the objects named in [`UNREAD`] kept as
/// checked text until something reads them.
pub fn parse_review(body: &[u8]) -> Result<Value, serde_json::Error> {
    rayshape_json::from_slice_lazy(body, UNREAD)
}

/// Objects of a review that the decision never reads: `metadata.managedFields[].fieldsV1`,
/// which the API server fills in before mutating admission (2.8 KB for KubeRay's sample
/// worker, a third of the review, and the costliest part of it to parse: small objects under
/// keys with escaped quotes), and the containers' probes, which KubeRay gives every Ray
/// container. An admin's patch rule that reads or changes one still sees it whole.
pub const UNREAD: &[&str] = &[
    "fieldsV1",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
];

/// The largest input: an AdmissionReview of an UPDATE carries the object and the stored
/// one, each up to the API server's 3 MiB limit on a request body, and a little more.
pub const MAX_INPUT: usize = 7 * 1024 * 1024;

/// The syntax the input came in, so output can use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Error)]
pub enum InputError {
    #[error(
        "input is {0} bytes; the limit is {MAX_INPUT} bytes (7 MiB: an AdmissionReview of an UPDATE, two objects at the API server's 3 MiB limit and the rest)"
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

/// Parse one or more documents (the preview's input). A `kind: List` is expanded into its
/// items.
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
        let mut docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(trimmed, kubectl_yaml()).map_err(|e| {
                InputError::Yaml(
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap_or("parse error")
                        .to_string(),
                )
            })?;
        docs.iter_mut().for_each(integral_floats_to_integers);
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

/// YAML as `kubectl` reads it (`sigs.k8s.io/yaml`, YAML 1.1): `0777` is octal (511), and
/// `yes`/`no`/`on`/`off` are booleans.
fn kubectl_yaml() -> serde_saphyr::Options {
    serde_saphyr::options! { legacy_octal_numbers: true }
}

/// `kubectl` turns YAML into JSON through Go's `float64`, whose JSON form has no fraction
/// when it has none: `1e3` and `08` reach the API server as `1000` and `8`, which integer
/// fields accept. The same here, for every integral number that fits.
fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.007_199_254_740_992e15
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(m) => m.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
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
    use proptest::prelude::*;

    fn same_as_from_slice(body: &[u8]) {
        let ours = parse_review(body)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string());
        let theirs = serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(body));
    }

    /// The API server's own review of KubeRay's sample worker (managedFields and all): its
    /// fieldsV1 and probes stay text through a whole decision, which comes out byte for
    /// byte as from a document parsed in full.
    #[test]
    fn a_real_reviews_managed_fields_stay_unread_through_a_decision() {
        let body = std::fs::read(
            rayshape_testkit::repo()
                .join("tests/fixtures/apiserver/admissionreview-sample-worker.json"),
        )
        .unwrap();
        let config = crate::config::Config::builtin();
        let lazy = parse_review(&body).unwrap();
        let eager = rayshape_json::from_slice(&body).unwrap();
        // Whether each fieldsV1 and each probe of the review is still text.
        let unread = |v: &Value| {
            let object = pod::at(v, &["request", "object"]).unwrap();
            let entries = pod::at(object, &["metadata", "managedFields"])
                .and_then(Value::as_array)
                .unwrap();
            let fields = entries.iter().map(|e| pod::field(e, "fieldsV1"));
            let probes = pod::containers(object)
                .iter()
                .flat_map(|c| ["livenessProbe", "readinessProbe"].map(|p| pod::field(c, p)));
            fields
                .chain(probes)
                .map(|o| {
                    o.and_then(Value::as_object)
                        .map(rayshape_json::Map::is_unread)
                })
                .collect::<Vec<_>>()
        };
        let all_unread = vec![Some(true); 3];
        assert_eq!(unread(&lazy), all_unread, "kept as text");
        let ours = crate::decide(&lazy, &config).unwrap();
        let theirs = crate::decide(&eager, &config).unwrap();
        assert!(ours.allowed());
        assert_eq!(ours.response_bytes(), theirs.response_bytes());
        assert_eq!(unread(&lazy), all_unread, "and never read");

        // An admin's rule that tests one probe and changes another sees them whole.
        let rules = crate::config::Config::from_sources(&crate::config::Sources {
            patches: Some(
                "patches:\n- name: probes\n  patch:\n  - {op: test, path: /spec/containers/0/readinessProbe/periodSeconds, value: 5}\n  - {op: replace, path: /spec/containers/0/livenessProbe/periodSeconds, value: 7}\n".into(),
            ),
            ..Default::default()
        })
        .unwrap();
        let lazy = parse_review(&body).unwrap();
        let ours = crate::decide(&lazy, &rules).unwrap();
        let theirs = crate::decide(&eager, &rules).unwrap();
        assert_eq!(ours.response_bytes(), theirs.response_bytes());
        let crate::review::Outcome::Allowed { patch, .. } = &ours.outcome else {
            panic!("refused: {:?}", ours.outcome)
        };
        let patch = String::from_utf8_lossy(patch);
        assert!(
            patch.contains(r#"{"op":"replace","path":"/spec/containers/0/livenessProbe/periodSeconds","value":7}"#),
            "{patch}"
        );
    }

    #[test]
    fn parse_review_is_from_slice() {
        let mut n = 0;
        for dir in ["tests/fixtures/kuberay", "tests/fixtures/apiserver"] {
            for e in std::fs::read_dir(rayshape_testkit::repo().join(dir)).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "json") {
                    same_as_from_slice(&std::fs::read(&path).unwrap());
                    n += 1;
                }
            }
        }
        assert!(n > 0);
        for body in [
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","userInfo":{"username":"x","groups":["a","b"]},"object":{"kind":"Pod","a":[1,-2,3.5,null,true,{"b":"\u00e9\n"}],"a":{"c":1}},"kind":{"kind":"Pod"},"dryRun":false}}"#[..],
            br#"{"request":{"uid":"u"},"request":{"uid":"v","options":null},"extra":[{"deep":[[[]]]}]}"#,
            br#"{"request":5,"apiVersion":"x"}"#,
            br#"[{"request":{"userInfo":1}}]"#,
            br#""text""#,
            br#"{}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","request":{"uid":"u","object":{}}} "#,
            // Errors, where they are errors for `from_slice`, also in fields not kept:
            br#"{"request":{"userInfo":{"n":1e400}}}"#,
            br#"{"request":{"userInfo":{"n":"\ud800"}}}"#,
            br#"{"request":{"userInfo":{"n":"\q"}}}"#,
            b"{\"request\":{\"userInfo\":\"\xff\"}}",
            b"{\"request\":{\"userInfo\":\"\x01\"}}",
            br#"{"request":{"userInfo":[1,]}}"#,
            br#"{"request":{}} x"#,
            br#"{"request":{"object":{"a":1}"#,
            b"",
        ] {
            same_as_from_slice(body);
        }
        // The same depth limit, in kept and in unread fields.
        for field in ["object", "userInfo"] {
            for depth in [100, 126, 127, 128, 200] {
                let body = format!(
                    r#"{{"request":{{"{field}":{}{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                same_as_from_slice(body.as_bytes());
            }
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let key = prop::sample::select(
                &[
                    "uid",
                    "object",
                    "kind",
                    "userInfo",
                    "request",
                    "apiVersion",
                    "a",
                    "",
                ][..],
            );
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..6).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn parse_review_agrees_on_any_json(v in json()) {
            same_as_from_slice(&serde_json::to_vec(&v).unwrap());
            same_as_from_slice(&serde_json::to_vec_pretty(&v).unwrap());
        }
    }

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
    fn numbers_mean_what_they_mean_to_kubectl() {
        // KubeRay's own samples write `defaultMode: 0777`.
        let text = b"kind: Pod\nvolumes:\n- configMap: {name: x, defaultMode: 0777}\na: 1e3\nb: 08\nc: 1.5\nd: 0x1F\ne: 1_000\nf: '0777'\ng: yes\nh: -0\n";
        let (d, _) = parse_documents(text).unwrap();
        let want = rayshape_json::json!({"kind": "Pod", "volumes": [{"configMap": {"name": "x", "defaultMode": 511}}],
            "a": 1000, "b": 8, "c": 1.5, "d": 31, "e": 1000, "f": "0777", "g": true, "h": 0});
        assert_eq!(d[0], want);
        assert!(
            render(&d, Format::Json).contains("\"defaultMode\": 511"),
            "an integer, not 511.0"
        );
        // JSON input is taken as it is.
        let (d, _) = parse_documents(b"{\"kind\": \"Pod\", \"a\": 1.0}").unwrap();
        assert_eq!(d[0]["a"], rayshape_json::json!(1.0));
    }

    #[test]
    fn yaml_output_round_trips_tricky_strings() {
        let v: Value = rayshape_json::json!({"kind": "Pod", "a": "true", "b": "1", "c": "on", "d": "null", "e": "8Gi", "f": "", "g": "0x10", "h": "- x", "i": "a: b"});
        let text = render(std::slice::from_ref(&v), Format::Yaml);
        let (back, _) = parse_documents(text.as_bytes()).unwrap();
        assert_eq!(back[0], v, "{text}");
    }
}
