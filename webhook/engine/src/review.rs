//! The last stage: the AdmissionReview response, with `diff(original, shaped)` as a
//! base64 RFC 6902 patch, and everything needed to log and count the decision.

use crate::apply::Shaped;
use crate::decode::Request;
use crate::plan::Denial;
use crate::primitives::json::write_str as json_str;
use base64::Engine;
use serde_json::{Value, json};

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
        let mut resp = serde_json::Map::new();
        resp.insert("uid".into(), json!(self.uid));
        match &self.outcome {
            Outcome::Allowed { patch, ops, shaped } => {
                resp.insert("allowed".into(), json!(true));
                if *ops > 0 {
                    resp.insert("patchType".into(), json!("JSONPatch"));
                    resp.insert(
                        "patch".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(patch)),
                    );
                }
                if !shaped.warnings.is_empty() {
                    resp.insert("warnings".into(), json!(shaped.warnings));
                }
            }
            Outcome::Denied(d) => {
                resp.insert("allowed".into(), json!(false));
                resp.insert("status".into(), json!({"code": 403, "reason": "Forbidden", "message": format!("rayshape: {}", d.message)}));
            }
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
    }

    /// The AdmissionReview to send back, as JSON bytes: the same text as serialising
    /// [`Self::response`], written directly (the server's path).
    pub fn response_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(match &self.outcome {
            Outcome::Allowed { patch, .. } => patch.len() * 4 / 3 + 256,
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
                    base64_into(&mut out, patch);
                    out.push(b'"');
                }
                if !shaped.warnings.is_empty() {
                    out.extend_from_slice(br#","warnings":["#);
                    for (i, w) in shaped.warnings.iter().enumerate() {
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

/// Pairs of base64 digits for every 12 bits: a patch is encoded two digits per lookup.
static BASE64_PAIRS: [[u8; 2]; 4096] = {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut t = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = [DIGITS[i >> 6], DIGITS[i & 63]];
        i += 1;
    }
    t
};

/// `bytes` in standard base64 with padding (what `base64`'s `STANDARD` engine writes),
/// appended to `out`. The response's largest part; this writes it about twice as fast.
fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, b'=');
    let (body, tail) = out[start..].split_at_mut(bytes.len() / 3 * 4);
    let mut chunks = bytes.chunks_exact(3);
    for (src, dst) in (&mut chunks).zip(body.chunks_exact_mut(4)) {
        let n = usize::from(src[0]) << 16 | usize::from(src[1]) << 8 | usize::from(src[2]);
        let [a, b] = BASE64_PAIRS[n >> 12];
        let [c, d] = BASE64_PAIRS[n & 0xfff];
        dst.copy_from_slice(&[a, b, c, d]);
    }
    // One or two bytes left: two or three digits, then the `=` already in place.
    if let [x, rest @ ..] = chunks.remainder() {
        let y = rest.first().copied().unwrap_or(0);
        let n = usize::from(*x) << 16 | usize::from(y) << 8;
        let [a, b] = BASE64_PAIRS[n >> 12];
        let [c, _] = BASE64_PAIRS[n & 0xfff];
        tail[0] = a;
        tail[1] = b;
        if !rest.is_empty() {
            tail[2] = c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_the_base64_crate_writes_it() {
        let bytes: Vec<u8> = (0..=255u8).chain((0..=255).rev()).collect();
        for len in 0..bytes.len() {
            for from in [0, 1, 2, 77] {
                let input = &bytes[from.min(len)..len];
                let mut out = b"x".to_vec();
                base64_into(&mut out, input);
                let want = base64::engine::general_purpose::STANDARD.encode(input);
                assert_eq!(&out[1..], want.as_bytes(), "{input:?}");
            }
        }
    }
}
