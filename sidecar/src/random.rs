//! Random numbers from the operating system: checkpoint epochs and retry jitter. Never
//! seeded from the process id or the clock, which are the same in every pod (the sidecar is
//! often PID 1, started at the same moment as its neighbours).

/// The operating system would not give random bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operating system gave no random bytes ({0}); the sidecar needs getrandom(2) or /dev/urandom"
)]
pub struct RandomError(String);

/// A random `u64` from the operating system.
pub fn u64() -> Result<u64, RandomError> {
    getrandom::u64().map_err(|e| RandomError(e.to_string()))
}

/// A random wait between half of `d` and `d` ("equal jitter"): sidecars that failed
/// together do not retry together. Without randomness (never seen on Linux), `d`.
pub fn jitter(d: std::time::Duration) -> std::time::Duration {
    match u64() {
        // 53 random bits: a uniform fraction in [0, 1).
        Ok(r) => d.mul_f64(0.5 + 0.5 * ((r >> 11) as f64 / (1u64 << 53) as f64)),
        Err(_) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jitter_is_random_and_bounded() {
        let d = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..64).map(|_| jitter(d)).collect();
        assert!(draws.iter().all(|w| *w >= d / 2 && *w <= d));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 60, "{draws:?}");
        let mean = draws.iter().map(|w| w.as_secs_f64()).sum::<f64>() / 64.0;
        assert!((6.0..9.0).contains(&mean), "mean {mean}");
    }
}
