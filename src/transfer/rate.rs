//! A reference's upload rate bound (`max_bytes_per_second`): each part is sent no earlier
//! than the bytes before it allow, so the average over any stretch stays at the bound.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    /// When the bytes granted so far will have been "spent" at the bound.
    next_free: Mutex<Option<Instant>>,
}

impl RateLimit {
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Mutex::new(None),
        }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `bytes` more may be sent.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next_free = self.next_free.lock().await;
            let now = Instant::now();
            // An idle stretch is not saved up as a burst.
            let start = next_free.map_or(now, |t| t.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *next_free = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn parts_are_spaced_at_the_bound() {
        let limit = RateLimit::new(1_000_000);
        let started = Instant::now();
        for _ in 0..5 {
            limit.take(500_000).await;
        }
        // Five half-second parts: the fifth may start after two seconds, not before.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = Instant::now();
        limit.take(500_000).await;
        assert_eq!(idle.elapsed(), Duration::ZERO, "idle time is not a debt");
    }
}
