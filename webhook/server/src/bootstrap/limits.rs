//! What keeps a flood of bad tokens from becoming a flood of TokenReviews: a token bucket
//! per source address, and a short-lived cache of positive reviews.

use super::verify::Caller;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked at most; past that, sources whose bucket is full again are forgotten.
const MAX_SOURCES: usize = 10_000;
/// Cached reviews at most; past that, expired ones are dropped, then the cache is cleared.
const MAX_CACHED: usize = 10_000;

/// A token bucket per source address.
#[derive(Default)]
pub struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    /// Take one request from `source`'s bucket, or say how long until one is there.
    pub fn take(
        &mut self,
        source: IpAddr,
        now: Instant,
        rate: f64,
        burst: u32,
    ) -> Result<(), Duration> {
        let burst = f64::from(burst.max(1));
        if self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate.max(1e-3)))
        }
    }
}

/// Positive TokenReviews, keyed by a SHA-256 of the token (the token itself is not kept).
#[derive(Default)]
pub struct ReviewCache {
    entries: HashMap<[u8; 32], (Caller, Instant)>,
}

impl ReviewCache {
    pub fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Caller> {
        match self.entries.get(key) {
            Some((caller, until)) if now < *until => Some(caller.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&mut self, key: [u8; 32], caller: Caller, until: Instant) {
        if self.entries.len() >= MAX_CACHED {
            let now = Instant::now();
            self.entries.retain(|_, (_, u)| now < *u);
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (caller, until));
    }
}

/// The token's own expiry (`exp`), read from its payload; the signature is the API
/// server's business, and the value only ever shortens how long a review is cached.
pub fn token_expiry(token: &str) -> Option<std::time::SystemTime> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(exp))
}

/// The pod a token claims to be from (`kubernetes.io` claims), unverified: only used to
/// tell a pod's owner, in an Event, why its sidecar was refused.
pub fn claimed_pod(token: &str) -> Option<Caller> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let k = claims.get("kubernetes.io")?;
    let text =
        |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map(str::to_string);
    Some(Caller {
        namespace: text(k.get("namespace"))?,
        service_account: text(k.pointer("/serviceaccount/name")).unwrap_or_default(),
        pod: text(k.pointer("/pod/name"))?,
        pod_uid: text(k.pointer("/pod/uid")).unwrap_or_default(),
        node: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.take(ip, t0, 1.0, 3).is_ok());
        }
        let wait = l.take(ip, t0, 1.0, 3).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(l.take(ip, t0 + Duration::from_millis(1100), 1.0, 3).is_ok());
        // Another source has its own bucket.
        assert!(l.take("10.0.0.2".parse().unwrap(), t0, 1.0, 3).is_ok());
    }

    #[test]
    fn cached_reviews_expire() {
        let mut c = ReviewCache::default();
        let t0 = Instant::now();
        let caller = Caller {
            namespace: "ns".into(),
            service_account: "sa".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            node: None,
        };
        c.put([1; 32], caller.clone(), t0 + Duration::from_secs(5));
        assert_eq!(c.get(&[1; 32], t0), Some(caller));
        assert_eq!(c.get(&[1; 32], t0 + Duration::from_secs(5)), None);
        assert_eq!(c.get(&[2; 32], t0), None);
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"exp": 2000000000, "kubernetes.io": {"namespace": "ml", "pod": {"name": "w", "uid": "u-1"}, "serviceaccount": {"name": "ray"}}}"#,
        );
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
        assert_eq!(
            token_expiry(&token),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        let c = claimed_pod(&token).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.pod.as_str(), c.pod_uid.as_str()),
            ("ml", "w", "u-1")
        );
        assert_eq!(claimed_pod("not a token"), None);
        assert_eq!(token_expiry("a.%%%.c"), None);
    }
}
