//! `POST /v1/bootstrap`: a sidecar proves which pod it belongs to with its projected,
//! pod-bound service-account token, and gets that pod's configuration.
//!
//! Nothing in the request but the `Authorization: Bearer` token is trusted. The token goes
//! to TokenReview with rayshape's audience; the pod it is bound to is looked up and must
//! still be that pod, not going away, and shaped by the webhook. Refusals are 401 (the token
//! proves nothing) or 403 (it proves an identity that may not bootstrap), with a reason;
//! API-server trouble is 503 with `Retry-After`. Every outcome about a known pod is
//! recorded as an Event on it. Tokens never appear in logs, metrics, errors or Events.

pub mod api;
pub mod limits;
pub mod verify;

use crate::State;
use crate::http::Body;
use api::{KubeApi, Trouble};
use http::{HeaderValue, Response, StatusCode, header};
use limits::{Limiter, ReviewCache};
use rayshape_contract::bootstrap::{Flush, Identity, NodeConfig, Refusal};
use rayshape_contract::keys;
use rayshape_engine::config::Config;
use rayshape_engine::primitives::quantity::Quantity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use verify::{Caller, PodFacts, Refused};

/// Seconds a sidecar is told to wait when the API server is in trouble.
const RETRY_AFTER_TROUBLE: u64 = 5;

/// The bootstrap's shared state: the API client, the limiter and the review cache.
pub struct Bootstrap {
    /// `None` when the webhook has no API access; bootstraps are then answered 503.
    api: Option<KubeApi>,
    why_no_api: String,
    limiter: Mutex<Limiter>,
    cache: Mutex<ReviewCache>,
    /// Event writes under way: recorded after the answer, at most [`EVENTS_AT_ONCE`].
    events: Arc<Semaphore>,
    /// The last Event recorded on each pod (by UID), as a digest of what it said.
    recorded: Arc<Mutex<HashMap<String, u64>>>,
    /// Bootstraps being checked with the API server, at most [`API_CHECKS_AT_ONCE`].
    checks: Semaphore,
}

/// Bootstraps being checked with the API server at once (TokenReview, pod read); past that
/// they are answered 503 with `Retry-After`. The per-source rate limit alone let many pods
/// together send the API server as many TokenReviews as they liked.
const API_CHECKS_AT_ONCE: usize = 16;

/// Pods whose last Event is remembered; past that the memory starts again, at the cost of
/// one repeated Event per pod.
const RECORDED_MAX: usize = 16_384;

/// Event writes under way at once; past that an Event is skipped (and counted): a slow
/// API server must not pile them up, and no answer waits for one.
const EVENTS_AT_ONCE: usize = 32;

impl Bootstrap {
    pub fn new(api: Result<KubeApi, String>) -> Bootstrap {
        let (api, why_no_api) = match api {
            Ok(a) => (Some(a), String::new()),
            Err(e) => (None, e),
        };
        Bootstrap {
            api,
            why_no_api,
            limiter: Mutex::default(),
            cache: Mutex::default(),
            events: Arc::new(Semaphore::new(EVENTS_AT_ONCE)),
            recorded: Arc::default(),
            checks: Semaphore::new(API_CHECKS_AT_ONCE),
        }
    }
}

/// What became of one bootstrap, before it is answered.
enum Outcome {
    Verified(Box<NodeConfig>),
    Refused(Refused),
    Trouble(Trouble),
    Limited(Duration),
    BadRequest(String),
}

/// Answer one bootstrap request from `source`.
pub async fn handle(
    authorization: Option<&HeaderValue>,
    source: IpAddr,
    state: &State,
) -> Response<Body> {
    let outcome = decide(authorization, source, state).await;
    let m = &state.metrics;
    let (status, result, body, retry) = match &outcome {
        Outcome::Verified(cfg) => (
            StatusCode::OK,
            "verified",
            serde_json::to_vec(cfg).unwrap_or_default(),
            None,
        ),
        Outcome::Refused(r) => (
            StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
            r.label(),
            refusal(r.public()),
            None,
        ),
        Outcome::Trouble(t) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            refusal(t.public()),
            Some(RETRY_AFTER_TROUBLE),
        ),
        Outcome::Limited(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            refusal(format!(
                "too many bootstrap requests from {source}; retry in {}s",
                wait.as_secs().max(1)
            )),
            Some(wait.as_secs().max(1)),
        ),
        Outcome::BadRequest(why) => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            refusal(why.clone()),
            None,
        ),
    };
    m.bootstrap_requests.with_label_values(&[result]).inc();
    match &outcome {
        Outcome::Verified(cfg) => {
            tracing::info!(namespace = %cfg.identity.namespace, pod = %cfg.identity.pod, uid = %cfg.identity.pod_uid, %source, "bootstrap verified");
        }
        Outcome::Trouble(t @ Trouble::Busy(_)) => {
            tracing::debug!(%source, error = %t, "bootstrap: too many under way")
        }
        Outcome::Trouble(t) => {
            tracing::error!(%source, error = %t, "bootstrap: API server trouble")
        }
        Outcome::Refused(r) => tracing::warn!(%source, reason = %r.reason(), "bootstrap refused"),
        Outcome::Limited(_) => tracing::debug!(%source, "bootstrap rate-limited"),
        Outcome::BadRequest(why) => {
            tracing::warn!(%source, reason = %why, "bootstrap: bad request")
        }
    }
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(secs) = retry {
        resp = resp.header(header::RETRY_AFTER, secs.to_string());
    }
    resp.body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(http_body_util::Full::new(bytes::Bytes::new())))
}

fn refusal(reason: String) -> Vec<u8> {
    serde_json::to_vec(&Refusal { reason }).unwrap_or_default()
}

async fn decide(authorization: Option<&HeaderValue>, source: IpAddr, state: &State) -> Outcome {
    let cfg = state.config();
    let settings = &cfg.settings;
    let b = &state.bootstrap;
    let limited = b.limiter.lock().unwrap_or_else(|e| e.into_inner()).take(
        source,
        Instant::now(),
        settings.bootstrap.rate_per_second,
        settings.bootstrap.burst,
    );
    if let Err(wait) = limited {
        return Outcome::Limited(wait);
    }
    let Some(token) = bearer(authorization) else {
        return Outcome::BadRequest(
            "no `Authorization: Bearer <token>` header: send the pod's projected service-account token".into(),
        );
    };
    let Ok(_check) = b.checks.try_acquire() else {
        return Outcome::Trouble(Trouble::Busy(API_CHECKS_AT_ONCE));
    };
    let Some(api) = &b.api else {
        return Outcome::Trouble(Trouble::Unavailable(format!(
            "bootstrap is not available: {}",
            b.why_no_api
        )));
    };
    let audience = &settings.sidecar.token_audience;

    // Who is calling: from the cache, or from TokenReview.
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let cached = b
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key, Instant::now());
    let caller = match cached {
        Some(c) => {
            state.metrics.bootstrap_cache_hits.inc();
            c
        }
        None => {
            let started = Instant::now();
            let reviewed = api.review(token, audience).await;
            state
                .metrics
                .bootstrap_api_seconds
                .with_label_values(&["tokenreview"])
                .observe(started.elapsed().as_secs_f64());
            let status = match reviewed {
                Ok(s) => s,
                Err(t) => return Outcome::Trouble(t),
            };
            match verify::token(&status, audience) {
                Ok(c) => {
                    remember(b, key, &c, token, settings.bootstrap.cache_seconds);
                    c
                }
                Err(r) => {
                    // The pod the token claims to be from goes to the log only: anyone can
                    // write a token claiming any pod, and an Event on it would let them
                    // write warnings on every pod in the cluster.
                    if let Some(claimed) = limits::claimed_pod(token) {
                        tracing::info!(claimed_namespace = %claimed.namespace, claimed_pod = %claimed.pod, "bootstrap: the refused token claims this pod (unverified)");
                    }
                    return Outcome::Refused(r);
                }
            }
        }
    };
    if let Err(r) = verify::allowed(&caller, settings) {
        record(b, api, state, &caller, false, r.reason());
        return Outcome::Refused(r);
    }

    // The pod it is bound to, as it is now.
    let started = Instant::now();
    let found = api.pod(&caller.namespace, &caller.pod).await;
    state
        .metrics
        .bootstrap_api_seconds
        .with_label_values(&["pod"])
        .observe(started.elapsed().as_secs_f64());
    let pod = match found {
        Ok(p) => p,
        Err(t) => return Outcome::Trouble(t),
    };
    let facts = match verify::pod(&caller, pod.as_ref(), &settings.key(keys::SHAPED)) {
        Ok(f) => f,
        Err(r) => {
            record(b, api, state, &caller, false, r.reason());
            return Outcome::Refused(r);
        }
    };
    let config = node_config(&cfg, &caller, &facts);
    record(
        b,
        api,
        state,
        &caller,
        true,
        format!(
            "sidecar verified as {}/{} (service account {}); it ships logs under {}",
            caller.namespace, caller.pod, caller.service_account, config.key_prefix
        ),
    );
    Outcome::Verified(Box::new(config))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(h: Option<&HeaderValue>) -> Option<&str> {
    let v = h?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Cache a positive review for `seconds`, never past the token's own expiry.
fn remember(b: &Bootstrap, key: [u8; 32], caller: &Caller, token: &str, seconds: u32) {
    if seconds == 0 {
        return;
    }
    let now = Instant::now();
    let mut until = now + Duration::from_secs(u64::from(seconds));
    if let Some(exp) = limits::token_expiry(token) {
        let left = exp
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        until = until.min(now + left);
    }
    if until > now {
        b.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, caller.clone(), until);
    }
}

/// Record an Event on the pod after the answer has gone: a failure is logged and counted,
/// and changes no answer; with [`EVENTS_AT_ONCE`] writes under way, it is skipped. An
/// outcome already recorded on the pod is not recorded again: a sidecar without a sink
/// asks for as long as it has none, and each ask would otherwise leave one more Event.
fn record(
    b: &Bootstrap,
    api: &KubeApi,
    state: &State,
    caller: &Caller,
    verified: bool,
    note: String,
) {
    let counter = state.metrics.bootstrap_events.clone();
    let digest = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (verified, &note).hash(&mut h);
        h.finish()
    };
    let already = b
        .recorded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&caller.pod_uid)
        == Some(&digest);
    if already {
        counter.with_label_values(&["unchanged"]).inc();
        return;
    }
    let Ok(slot) = b.events.clone().try_acquire_owned() else {
        tracing::debug!(namespace = %caller.namespace, pod = %caller.pod, "bootstrap: Event skipped, too many under way");
        counter.with_label_values(&["skipped"]).inc();
        return;
    };
    {
        let mut r = b.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= RECORDED_MAX {
            r.clear();
        }
        r.insert(caller.pod_uid.clone(), digest);
    }
    let (api, caller, recorded) = (api.clone(), caller.clone(), b.recorded.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let result = match api.event(&caller, verified, &note).await {
            Ok(()) => "created",
            Err(e) => {
                tracing::warn!(namespace = %caller.namespace, pod = %caller.pod, error = %e, "bootstrap: cannot record an Event");
                // Not recorded: the next ask tries again.
                let mut r = recorded.lock().unwrap_or_else(|e| e.into_inner());
                if r.get(&caller.pod_uid) == Some(&digest) {
                    r.remove(&caller.pod_uid);
                }
                "failed"
            }
        };
        counter.with_label_values(&[result]).inc();
    });
}

/// The node's configuration: the sink and batching of `webhook.yaml`, under a prefix that
/// belongs to this pod alone.
fn node_config(cfg: &Config, caller: &Caller, facts: &PodFacts) -> NodeConfig {
    let sc = &cfg.settings.sidecar;
    let cluster = if facts.ray_cluster.is_empty() {
        "none"
    } else {
        &facts.ray_cluster
    };
    NodeConfig {
        sink: sc.log_sink.clone(),
        key_prefix: format!(
            "{}/{}/{}-{}",
            caller.namespace, cluster, caller.pod, caller.pod_uid
        ),
        flush: Flush {
            max_bytes: sc
                .flush
                .max_bytes
                .as_deref()
                .and_then(|b| Quantity::parse(b).ok())
                .and_then(|q| u64::try_from(q.floor_units()).ok()),
            max_age_seconds: sc.flush.max_age_seconds,
        },
        identity: Identity {
            namespace: caller.namespace.clone(),
            pod: caller.pod.clone(),
            pod_uid: caller.pod_uid.clone(),
            service_account: caller.service_account.clone(),
            node: if facts.node.is_empty() {
                caller.node.clone().unwrap_or_default()
            } else {
                facts.node.clone()
            },
            ray_cluster: facts.ray_cluster.clone(),
            ray_node_type: facts.ray_node_type.clone(),
        },
    }
}

/// Label values of `rayshape_webhook_bootstrap_requests_total`.
pub const RESULTS: [&str; 6] = [
    "verified",
    "unauthenticated",
    "forbidden",
    "rate_limited",
    "bad_request",
    "unavailable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_checks_at_once_are_bounded() {
        let state = State::new(
            Config::builtin(),
            1,
            Duration::from_secs(1),
            1 << 20,
            Bootstrap::new(Err("no API in this test".into())),
        );
        let h = HeaderValue::from_static("Bearer abc");
        let source: IpAddr = [127, 0, 0, 1].into();
        let busy = |o: &Outcome| matches!(o, Outcome::Trouble(Trouble::Busy(_)));
        assert!(!busy(&decide(Some(&h), source, &state).await));
        let all = state
            .bootstrap
            .checks
            .try_acquire_many(API_CHECKS_AT_ONCE as u32)
            .unwrap();
        let o = decide(Some(&h), source, &state).await;
        assert!(busy(&o), "answered 503 at once, not queued");
        drop(all);
        assert!(!busy(&decide(Some(&h), source, &state).await));
    }

    #[test]
    fn bearer_tokens() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn node_config_is_the_pods_own() {
        let cfg = Config::builtin();
        let caller = Caller {
            namespace: "ml".into(),
            service_account: "ray".into(),
            pod: "w-1".into(),
            pod_uid: "u-1".into(),
            node: Some("n-token".into()),
        };
        let c = node_config(&cfg, &caller, &PodFacts::default());
        assert_eq!(c.key_prefix, "ml/none/w-1-u-1");
        assert_eq!(c.identity.node, "n-token");
        let facts = PodFacts {
            ray_cluster: "rc".into(),
            ray_node_type: "worker".into(),
            node: "n-1".into(),
        };
        let c = node_config(&cfg, &caller, &facts);
        assert_eq!(c.key_prefix, "ml/rc/w-1-u-1");
        assert_eq!(c.identity.node, "n-1");
    }
}
