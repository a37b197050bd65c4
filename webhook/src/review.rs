//! `admission.k8s.io/v1` AdmissionReview: check the request, shape its object, and build
//! the response with `diff(original, shaped)` as a base64 RFC 6902 patch.

use crate::config::Config;
use crate::shape::{self, Denial, Shaped};
use base64::Engine;
use serde_json::{Value, json};
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

/// What the webhook decided about one review, with everything needed to log and count it.
#[derive(Debug)]
pub struct Decision {
    pub uid: String,
    pub operation: String,
    /// `Kind` of the object, as the request names it.
    pub kind: String,
    pub namespace: String,
    /// `metadata.name`, often empty on CREATE (the API server names the pod afterwards).
    pub name: String,
    pub generate_name: String,
    pub dry_run: bool,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Admitted. `patch` is the RFC 6902 JSON (`[]` when nothing changed) of `ops` operations.
    Allowed {
        patch: Vec<u8>,
        ops: usize,
        shaped: Shaped,
    },
    Denied(Denial),
}

impl Decision {
    /// The AdmissionReview to send back.
    pub fn response(&self) -> Value {
        let mut resp = json!({"uid": self.uid});
        match &self.outcome {
            Outcome::Allowed { patch, ops, shaped } => {
                resp["allowed"] = json!(true);
                if *ops > 0 {
                    resp["patchType"] = json!("JSONPatch");
                    resp["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                }
                if !shaped.warnings.is_empty() {
                    resp["warnings"] = json!(shaped.warnings);
                }
            }
            Outcome::Denied(d) => {
                resp["allowed"] = json!(false);
                resp["status"] = json!({"code": 403, "reason": "Forbidden", "message": format!("rayshape: {}", d.message)});
            }
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
    }

    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed { .. })
    }

    pub fn result_label(&self) -> &'static str {
        match &self.outcome {
            Outcome::Denied(_) => "denied",
            Outcome::Allowed { ops: 0, .. } => "unchanged",
            Outcome::Allowed { .. } => "shaped",
        }
    }
}

/// Decide a review. Pods are shaped on CREATE only: an admitted pod's spec is immutable, and
/// KubeRay updates live pods (labels, annotations), which must go through untouched. KubeRay's
/// own objects are shaped on CREATE and UPDATE (sizing is idempotent, so the autoscaler's
/// `replicas` updates pass unchanged).
pub fn decide(review: &Value, cfg: &Config) -> Result<Decision, ReviewError> {
    let api = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api != "admission.k8s.io/v1" {
        return Err(ReviewError::ApiVersion(api.into()));
    }
    let kind = review.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind.into()));
    }
    let req = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or(ReviewError::NoRequest)?;
    let uid = req
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NoUid)?;
    let text = |p: &[&str]| {
        crate::pod::at(req, p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let operation = text(&["operation"]);
    let object = req.get("object").filter(|o| o.is_object());
    let mut decision = Decision {
        uid: uid.to_string(),
        kind: req
            .get("kind")
            .and_then(|k| k.get("kind"))
            .and_then(Value::as_str)
            .or_else(|| object.and_then(|o| o.get("kind")).and_then(Value::as_str))
            .unwrap_or("")
            .to_string(),
        namespace: text(&["namespace"]),
        name: object
            .and_then(|o| crate::pod::at(o, &["metadata", "name"]))
            .and_then(Value::as_str)
            .map_or_else(|| text(&["name"]), str::to_string),
        generate_name: object
            .and_then(|o| crate::pod::at(o, &["metadata", "generateName"]))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        dry_run: req.get("dryRun").and_then(Value::as_bool).unwrap_or(false),
        operation,
        outcome: Outcome::Allowed {
            patch: b"[]".to_vec(),
            ops: 0,
            shaped: Shaped {
                object: Value::Null,
                warnings: Vec::new(),
                skipped: Some("not a CREATE"),
                failed_rules: Vec::new(),
            },
        },
    };
    let sub = text(&["subResource"]);
    let ray_crd = matches!(
        decision.kind.as_str(),
        "RayCluster" | "RayJob" | "RayService"
    );
    let shaped_op = decision.operation == "CREATE" || (ray_crd && decision.operation == "UPDATE");
    if !shaped_op || !sub.is_empty() {
        return Ok(decision);
    }
    let object = object.ok_or_else(|| ReviewError::NoObject(decision.operation.clone()))?;
    // The object may lack its namespace on CREATE; the request always has it.
    let ns = Some(decision.namespace.as_str()).filter(|n| !n.is_empty());
    decision.outcome = match shape::shape(object, ns, cfg) {
        // An object that passed through untouched needs no diff against itself.
        Ok(shaped) if shaped.skipped.is_some() => Outcome::Allowed {
            patch: b"[]".to_vec(),
            ops: 0,
            shaped,
        },
        Ok(shaped) => {
            let (patch, ops) = crate::diff::diff_json(object, &shaped.object);
            Outcome::Allowed { patch, ops, shaped }
        }
        Err(d) => Outcome::Denied(d),
    };
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(op: &str, object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "operation": op, "namespace": "ns", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": object}})
    }

    #[test]
    fn malformed_reviews() {
        let cfg = Config::builtin();
        assert_eq!(
            decide(&json!({"apiVersion": "v1"}), &cfg).unwrap_err(),
            ReviewError::ApiVersion("v1".into())
        );
        assert_eq!(
            decide(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}),
                &cfg
            )
            .unwrap_err(),
            ReviewError::Kind("Pod".into())
        );
        assert_eq!(
            decide(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
                &cfg
            )
            .unwrap_err(),
            ReviewError::NoRequest
        );
        let mut r = review("CREATE", json!({}));
        r["request"]["object"] = Value::Null;
        assert!(matches!(decide(&r, &cfg), Err(ReviewError::NoObject(_))));
    }

    #[test]
    fn non_ray_and_updates_pass_with_no_patch() {
        let cfg = Config::builtin();
        let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "b"}]}});
        let d = decide(&review("CREATE", plain), &cfg).unwrap();
        let resp = d.response();
        assert_eq!(resp["response"], json!({"uid": "u-1", "allowed": true}));
        let ray = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "head"}}, "spec": {"containers": [{"name": "a"}]}});
        let d = decide(&review("UPDATE", ray.clone()), &cfg).unwrap();
        assert_eq!(
            d.response()["response"],
            json!({"uid": "u-1", "allowed": true})
        );
        let d = decide(&review("CREATE", ray), &cfg).unwrap();
        assert_eq!(d.result_label(), "shaped");
        assert_eq!(d.response()["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn denial_has_status() {
        let cfg = Config::builtin();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "nope"}}, "spec": {"containers": [{"name": "a"}]}});
        let d = decide(&review("CREATE", pod), &cfg).unwrap();
        let r = d.response();
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 403);
        assert!(
            r["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("known instance types: 2CPU-8GB")
        );
    }
}
