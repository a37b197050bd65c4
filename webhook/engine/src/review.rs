//! The last stage: the AdmissionReview response, with `diff(original, shaped)` as a
//! base64 RFC 6902 patch, and everything needed to log and count the decision.

use crate::apply::Shaped;
use crate::decode::Request;
use crate::plan::Denial;
use rayshape_json::write_str as json_str;
use rayshape_json::{Value, json};

/// What the webhook decided about one review.
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
    /// The decision about a decoded request.
    pub fn new(req: &Request<'_>, outcome: Outcome) -> Decision {
        Decision {
            uid: req.uid.to_string(),
            operation: req.operation.to_string(),
            kind: req.kind.to_string(),
            namespace: req.namespace.to_string(),
            name: req.name.to_string(),
            generate_name: req.generate_name.to_string(),
            dry_run: req.dry_run,
            outcome,
        }
    }

    /// The AdmissionReview to send back.
    pub fn response(&self) -> Value {
        let mut resp = rayshape_json::Map::new();
        resp.insert("uid", json!(self.uid));
        match &self.outcome {
            Outcome::Allowed { patch, ops, shaped } => {
                resp.insert("allowed", json!(true));
                if *ops > 0 {
                    resp.insert("patchType", json!("JSONPatch"));
                    resp.insert(
                        "patch",
                        json!(base64_simd::STANDARD.encode_to_string(patch)),
                    );
                }
                if !shaped.warnings.is_empty() {
                    resp.insert("warnings", json!(sent_warnings(&shaped.warnings)));
                }
            }
            Outcome::Denied(d) => {
                resp.insert("allowed", json!(false));
                resp.insert("status", json!({"code": 403, "reason": "Forbidden", "message": format!("rayshape: {}", d.message)}));
            }
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
    }

    /// The AdmissionReview to send back, as JSON bytes: the same text as serialising
    /// [`Self::response`], written directly (the server's path).
    pub fn response_bytes(&self) -> Vec<u8> {
        // Sized once: growing a 5 KB answer would copy it.
        let mut out = Vec::with_capacity(match &self.outcome {
            Outcome::Allowed { patch, shaped, .. } => {
                let warnings: usize = shaped.warnings.iter().map(|w| w.len() + 8).sum();
                let warnings = warnings.min(MAX_WARNINGS * 130);
                patch.len() * 4 / 3 + warnings + 256
            }
            Outcome::Denied(d) => d.message.len() + 256,
        });
        out.extend_from_slice(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
        );
        json_str(&mut out, &self.uid);
        match &self.outcome {
            Outcome::Allowed { patch, ops, shaped } => {
                out.extend_from_slice(br#","allowed":true"#);
                if *ops > 0 {
                    out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
                    base64_simd::STANDARD.encode_append(patch, &mut out);
                    out.push(b'"');
                }
                if !shaped.warnings.is_empty() {
                    out.extend_from_slice(br#","warnings":["#);
                    for (i, w) in sent_warnings(&shaped.warnings).iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json_str(&mut out, w);
                    }
                    out.push(b']');
                }
            }
            Outcome::Denied(d) => {
                out.extend_from_slice(
                    br#","allowed":false,"status":{"code":403,"reason":"Forbidden","message":"#,
                );
                json_str(&mut out, &format!("rayshape: {}", d.message));
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"}}");
        out
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

/// The most warnings an answer carries. The API server stops passing warnings on once they
/// total 4,096 characters, from every webhook and from itself, and drops what follows
/// unsaid; at most 120 characters each, these take under half of that.
pub const MAX_WARNINGS: usize = 16;

/// `warnings` as sent: past [`MAX_WARNINGS`], the first ones and a last saying how many
/// more there are and where to read them.
fn sent_warnings(warnings: &[String]) -> std::borrow::Cow<'_, [String]> {
    if warnings.len() <= MAX_WARNINGS {
        return std::borrow::Cow::Borrowed(warnings);
    }
    let kept = MAX_WARNINGS - 1;
    let mut out = warnings[..kept].to_vec();
    out.push(format!(
        "… and {} more warnings: `rayshape-webhook mutate` on this object prints them all",
        warnings.len() - kept
    ));
    std::borrow::Cow::Owned(out)
}
