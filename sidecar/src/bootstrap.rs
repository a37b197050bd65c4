//! Identity bootstrap, the sidecar's side: prove which pod it belongs to with the pod's
//! projected service-account token, and receive that pod's configuration.
//!
//! The token is read from its file at every attempt, since the kubelet rotates it. The
//! webhook's certificate must chain to the CA bundle the webhook injected
//! (`RAYSHAPE_BOOTSTRAP_CA`); nothing else is trusted. A small HTTP/1.1 client of its own
//! (hyper and rustls) keeps the Kubernetes client out of the sidecar.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rayshape_contract::bootstrap::{NodeConfig, Refusal};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long one attempt may take, connection to answer: past the webhook's own worst case
/// (5 s for the TokenReview and 5 s for the pod read, then its 503 and `Retry-After`), so
/// the sidecar hears why rather than giving up first.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read: a node configuration is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Why the bootstrap cannot even be attempted: configuration, not a passing trouble.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error(
        "the bootstrap URL {0:?} is not an https URL with a host (like https://rayshape-webhook.rayshape-system.svc:443/v1/bootstrap)"
    )]
    Url(String),
    #[error(
        "no CA to check the bootstrap endpoint with: RAYSHAPE_BOOTSTRAP_CA (injected by the webhook from its --bootstrap-ca) or bootstrap.caFile is empty"
    )]
    NoCa,
    #[error("the bootstrap CA holds no usable certificate: {0}")]
    BadCa(String),
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The webhook verified this pod and sent its configuration.
    Verified(Box<NodeConfig>),
    /// The webhook refused this pod (401, 403): the reason, for the log.
    Refused { status: u16, reason: String },
    /// No answer that settles it (network, 5xx, 429): try again, after `retry_after` if the
    /// webhook said.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// How long to wait before the next attempt. A refusal is the configuration's (an audience,
/// a namespace or service account not allowed, a pod not shaped) and lasts until an admin
/// acts, while each attempt costs the API server a TokenReview and often a pod read: its
/// wait doubles from 10 s up to 15 minutes, as a sidecar without a sink asks again. Trouble
/// (no answer, 5xx, 429) passes: its wait doubles from 1 s up to a minute, and is never
/// shorter than the webhook's `Retry-After` (taken as at most 15 minutes). Waits are jittered (sidecars that failed
/// together do not retry together): the sidecar's own backoff down to half, a `Retry-After`
/// up to half again, as it is a floor.
#[derive(Debug)]
pub struct Retry {
    trouble: Duration,
    refused: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            trouble: Duration::from_secs(1),
            refused: Duration::from_secs(10),
        }
    }
}

impl Retry {
    const TROUBLE_MAX: Duration = Duration::from_secs(60);
    const REFUSED_MAX: Duration = Duration::from_secs(15 * 60);

    /// The wait after `outcome` (a verified one needs none: zero).
    pub fn after(&mut self, outcome: &Outcome) -> Duration {
        match outcome {
            Outcome::Verified(_) => Duration::ZERO,
            Outcome::Refused { .. } => {
                let d = self.refused;
                self.refused = (d * 2).min(Self::REFUSED_MAX);
                crate::random::jitter(d)
            }
            Outcome::Unavailable { retry_after, .. } => {
                let d = self.trouble;
                self.trouble = (d * 2).min(Self::TROUBLE_MAX);
                let own = crate::random::jitter(d);
                match retry_after {
                    // jitter(x) is between x/2 and x: this is between `ra` and 1.5 times it.
                    // The header's number is the network's: bounded before any arithmetic.
                    Some(ra) => {
                        let ra = (*ra).min(Self::REFUSED_MAX);
                        (ra + crate::random::jitter(ra) - ra / 2).max(own)
                    }
                    None => own,
                }
            }
        }
    }

    /// The wait after a bootstrap that cannot even be attempted (its setup is wrong).
    pub fn after_setup_error(&self) -> Duration {
        crate::random::jitter(Duration::from_secs(60))
    }
}

/// A configured bootstrap client.
pub struct Client {
    authority: String,
    host: String,
    port: u16,
    path: String,
    server: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    token_file: PathBuf,
}

impl Client {
    /// A client for `url`, trusting only the certificates in `ca_pem`.
    pub fn new(url: &str, ca_pem: &str, token_file: PathBuf) -> Result<Client, SetupError> {
        let bad = || SetupError::Url(url.to_string());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = uri
            .host()
            .ok_or_else(bad)?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let server = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        if ca_pem.trim().is_empty() {
            return Err(SetupError::NoCa);
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| SetupError::BadCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| SetupError::BadCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(SetupError::BadCa("no PEM certificate in it".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::BadCa(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            authority: uri.authority().map_or(host.clone(), |a| a.to_string()),
            host,
            port,
            path,
            server,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token_file,
        })
    }

    /// One attempt: read the token, ask, read the answer. Never fails: what went wrong is
    /// an [`Outcome`], and no outcome carries the token.
    pub async fn attempt(&self) -> Outcome {
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => {
                return unavailable(format!(
                    "the token file {} is empty (the kubelet writes it when the pod starts)",
                    self.token_file.display()
                ));
            }
            Err(e) => {
                return unavailable(format!(
                    "cannot read the token file {}: {e}",
                    self.token_file.display()
                ));
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.exchange(&token)).await {
            Ok(o) => o,
            Err(_) => unavailable(format!(
                "no answer from {} within {}s",
                self.authority,
                ATTEMPT_TIMEOUT.as_secs()
            )),
        }
    }

    async fn exchange(&self, token: &str) -> Outcome {
        let tcp = match tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await {
            Ok(t) => t,
            Err(e) => return unavailable(format!("cannot connect to {}: {e}", self.authority)),
        };
        let _ = tcp.set_nodelay(true);
        let tls = match self.tls.connect(self.server.clone(), tcp).await {
            Ok(t) => t,
            Err(e) => {
                return unavailable(format!(
                    "TLS with {} failed (is RAYSHAPE_BOOTSTRAP_CA the webhook's CA?): {e}",
                    self.authority
                ));
            }
        };
        let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
        {
            Ok(x) => x,
            Err(e) => return unavailable(format!("HTTP with {} failed: {e}", self.authority)),
        };
        let driver = tokio::spawn(conn);
        let request = Request::post(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{}")));
        let request = match request {
            Ok(r) => r,
            // A token with characters a header cannot carry: say so without showing it.
            Err(_) => {
                return unavailable(
                    "the token file holds characters an HTTP header cannot carry".into(),
                );
            }
        };
        let outcome = match send.send_request(request).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map(|b| b.to_bytes());
                match body {
                    Ok(bytes) => answer(status, &bytes, retry_after),
                    Err(e) => unavailable(format!("the answer could not be read: {e}")),
                }
            }
            Err(e) => unavailable(format!("the request to {} failed: {e}", self.authority)),
        };
        driver.abort();
        outcome
    }
}

fn unavailable(reason: String) -> Outcome {
    Outcome::Unavailable {
        reason,
        retry_after: None,
    }
}

/// Read an answer by its status.
fn answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    let reason = || {
        serde_json::from_slice::<Refusal>(body)
            .map(|r| r.reason)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
    };
    match status {
        200 => match serde_json::from_slice::<NodeConfig>(body) {
            Ok(cfg) => Outcome::Verified(Box::new(cfg)),
            Err(e) => unavailable(format!(
                "the webhook's answer is not a node configuration: {e}"
            )),
        },
        401 | 403 => Outcome::Refused {
            status,
            reason: reason(),
        },
        _ => Outcome::Unavailable {
            reason: format!("HTTP {status}: {}", reason()),
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_to_fifteen_minutes_and_retry_after_is_a_floor() {
        let refused = Outcome::Refused {
            status: 403,
            reason: "x".into(),
        };
        let mut r = Retry::default();
        let waits: Vec<Duration> = (0..12).map(|_| r.after(&refused)).collect();
        let mut d = Duration::from_secs(10);
        for w in &waits {
            assert!(*w >= d / 2 && *w <= d, "{w:?} against {d:?}");
            d = (d * 2).min(Duration::from_secs(900));
        }
        assert!(waits[11] >= Duration::from_secs(450), "{waits:?}");
        // Trouble keeps its own, shorter backoff.
        let down = |ra| Outcome::Unavailable {
            reason: "503".into(),
            retry_after: ra,
        };
        let w = r.after(&down(None));
        assert!(
            w >= Duration::from_millis(500) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        // Never before Retry-After, and spread above it.
        let ws: Vec<Duration> = (0..20)
            .map(|_| Retry::default().after(&down(Some(Duration::from_secs(5)))))
            .collect();
        for w in &ws {
            assert!(
                *w >= Duration::from_secs(5) && *w <= Duration::from_millis(7500),
                "{w:?}"
            );
        }
        assert!(ws.iter().any(|w| *w > Duration::from_secs(5)), "{ws:?}");
        // Any number in the header, bounded: no overflow.
        let w = Retry::default().after(&down(Some(Duration::from_secs(u64::MAX))));
        assert!(
            w >= Duration::from_secs(900) && w <= Duration::from_secs(1350),
            "{w:?}"
        );
        // A backoff already longer than Retry-After goes on as it would without one.
        let mut r = Retry::default();
        for _ in 0..8 {
            r.after(&down(None));
        }
        let w = r.after(&down(Some(Duration::from_secs(5))));
        assert!(
            w >= Duration::from_secs(30) && w <= Duration::from_secs(60),
            "{w:?}"
        );
    }

    #[test]
    fn answers_by_status() {
        let cfg = br#"{"sink": {"url": "s3://b/p", "options": {"aws_region": "x"}}, "keyPrefix": "ns/c/p-u", "flush": {"maxBytes": 1024}, "identity": {"namespace": "ns", "pod": "p", "podUid": "u"}}"#;
        match answer(200, cfg, None) {
            Outcome::Verified(c) => {
                assert_eq!(c.sink.url, "s3://b/p");
                assert_eq!(c.key_prefix, "ns/c/p-u");
                assert_eq!(c.flush.max_bytes, Some(1024));
                assert_eq!(c.identity.pod_uid, "u");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            answer(403, br#"{"reason": "pod x is being deleted"}"#, None),
            Outcome::Refused {
                status: 403,
                reason: "pod x is being deleted".into()
            }
        );
        assert_eq!(
            answer(
                503,
                br#"{"reason": "the API server did not answer"}"#,
                Some(Duration::from_secs(5))
            ),
            Outcome::Unavailable {
                reason: "HTTP 503: the API server did not answer".into(),
                retry_after: Some(Duration::from_secs(5))
            }
        );
        assert!(matches!(
            answer(200, b"not json", None),
            Outcome::Unavailable { .. }
        ));
    }

    #[test]
    fn setup_errors_say_what_to_fix() {
        let e = |url: &str, ca: &str| {
            Client::new(url, ca, PathBuf::from("/t"))
                .err()
                .map(|e| e.to_string())
        };
        assert!(
            e("http://x/v1/bootstrap", "x")
                .unwrap()
                .contains("not an https URL")
        );
        assert!(
            e("https://x/v1/bootstrap", "")
                .unwrap()
                .contains("RAYSHAPE_BOOTSTRAP_CA")
        );
        assert!(
            e("https://x/v1/bootstrap", "no pem here")
                .unwrap()
                .contains("no usable certificate")
        );
    }
}
