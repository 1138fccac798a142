//! When to try a deferred recipient again, and when to give up.

use std::time::Duration;

/// A retry schedule: exponential backoff with jitter, capped, and a maximum
/// time in the queue.
///
/// RFC 5321 section 4.5.4.1 (C-Q-02) asks for a wait before each retry,
/// a give-up time of at least 4 to 5 days and configurable parameters. The
/// defaults follow Postfix (`minimal_backoff_time = 300s`, doubling) with a
/// cap of 3 hours and 5 days in the queue: retries after about 5, 10, 20,
/// 40 and 80 minutes, then every 3 hours.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Wait before the first retry. Default 5 minutes, long enough for
    /// greylisting servers.
    pub first: Duration,
    /// Factor between two consecutive waits. Default 2.
    pub multiplier: f64,
    /// Longest wait between two attempts. Default 3 hours.
    pub max_interval: Duration,
    /// Random spread of each wait, as a fraction: 0.2 makes each wait 20%
    /// shorter or longer at random, so that messages deferred together are
    /// not retried together. Default 0.2.
    pub jitter: f64,
    /// Time after which a message with pending recipients is bounced.
    /// Default 5 days.
    pub max_age: Duration,
    /// The same for messages with the null sender (bounces), which are
    /// then dropped. Default 2 days.
    pub bounce_max_age: Duration,
    /// Time in the queue after which the sender gets a delay warning,
    /// once per message; `None` sends none. Default `None`, as Postfix's
    /// `delay_warning_time = 0h`.
    pub warn_after: Option<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        RetrySchedule {
            first: Duration::from_secs(5 * MINUTE),
            multiplier: 2.0,
            max_interval: Duration::from_secs(3 * HOUR),
            jitter: 0.2,
            max_age: Duration::from_secs(5 * 24 * HOUR),
            bounce_max_age: Duration::from_secs(2 * 24 * HOUR),
            warn_after: None,
        }
    }
}

impl RetrySchedule {
    /// The wait after the `attempts`-th failed attempt (1 for the first),
    /// without jitter.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let exponent = i32::try_from(attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let seconds = self.first.as_secs_f64() * factor;
        let cap = self.max_interval.as_secs_f64();
        if !seconds.is_finite() || seconds >= cap {
            return self.max_interval;
        }
        Duration::from_secs_f64(seconds.max(0.0))
    }

    /// The wait after the `attempts`-th failed attempt, with jitter drawn
    /// from `random`, a number in `[0, 1)`.
    pub fn delay(&self, attempts: u32, random: f64) -> Duration {
        let base = self.base_delay(attempts).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0))
    }

    /// The maximum age for a message from `sender` (`None` is `<>`).
    pub fn max_age_for(&self, sender: Option<&str>) -> Duration {
        if sender.is_none() {
            self.bounce_max_age
        } else {
            self.max_age
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delays_double_then_cap() {
        let schedule = RetrySchedule::default();
        let minutes: Vec<u64> = (1..=8)
            .map(|attempt| schedule.base_delay(attempt).as_secs() / 60)
            .collect();
        assert_eq!(minutes, [5, 10, 20, 40, 80, 160, 180, 180]);
    }

    #[test]
    fn jitter_stays_within_spread() {
        let schedule = RetrySchedule::default();
        let base = schedule.base_delay(3).as_secs_f64();
        for random in [0.0, 0.25, 0.5, 0.999] {
            let delay = schedule.delay(3, random).as_secs_f64();
            assert!(delay >= base * 0.8 - 1e-6, "{delay} below {base}");
            assert!(delay <= base * 1.2 + 1e-6, "{delay} above {base}");
        }
        assert!(schedule.delay(3, 0.0) < schedule.delay(3, 0.999));
    }

    #[test]
    fn huge_attempt_count_is_capped() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.base_delay(u32::MAX), schedule.max_interval);
    }

    #[test]
    fn null_sender_has_shorter_lifetime() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_age_for(None), Duration::from_secs(2 * 86_400));
        assert_eq!(
            schedule.max_age_for(Some("a@b.test")),
            Duration::from_secs(5 * 86_400)
        );
    }
}
