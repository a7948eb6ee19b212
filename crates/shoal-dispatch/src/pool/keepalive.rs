//! Keep-alive learned from the function's idle gaps (after "Serverless in the Wild",
//! ATC 2020): how long an idle pool keeps its instances before scaling to zero.
//!
//! The pool records every *idle gap* — from the moment it had nothing in flight or queued
//! to the next call — and, once it has seen [`MIN_GAPS`], sets the keep-alive of an idle
//! pool from their distribution instead of the fixed `idle_timeout`:
//!
//! * the 99th percentile fits within `idle_timeout`: keep instances for 1.25 × that
//!   percentile, but at least [`MIN_KEEP`] (the paper's histogram has one-minute bins: a
//!   client calling in a tight loop makes many millisecond gaps, which say nothing about
//!   the pause a person takes) — the next call almost surely comes by then, and waiting
//!   longer only holds memory;
//! * even the 5th percentile is beyond `idle_timeout`: the next call almost never comes
//!   within it, so keeping the instance that long costs memory and saves nothing — stop
//!   after [`STOP_AFTER`]. The paper pre-warms an instance at the 5th percentile instead;
//!   here the runtime's warm pool already makes such a start cheap, for any function;
//! * otherwise `idle_timeout`.
//!
//! `idle_timeout` stays the ceiling: learning never keeps an instance longer than the
//! user asked. This module is pure: the pool feeds it gaps and asks for the keep-alive.

use std::collections::VecDeque;
use std::time::Duration;

/// Gaps remembered (the newest win).
const HISTORY: usize = 64;
/// Gaps needed before the history is trusted.
pub(super) const MIN_GAPS: usize = 8;
/// The shortest keep-alive short gaps set.
const MIN_KEEP: Duration = Duration::from_secs(60);
/// How long an instance whose next call is almost surely beyond `idle_timeout` stays.
const STOP_AFTER: Duration = Duration::from_secs(1);
/// Margin over the 99th percentile.
const MARGIN: f64 = 1.25;

/// What the history says about an idle pool's keep-alive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KeepAlive {
    pub keep: Duration,
    /// The percentiles it came from (`None` until enough gaps were seen).
    pub p5: Option<Duration>,
    pub p99: Option<Duration>,
}

#[derive(Debug, Default)]
pub(crate) struct Gaps {
    gaps: VecDeque<Duration>,
}

impl Gaps {
    pub fn record(&mut self, gap: Duration) {
        if self.gaps.len() == HISTORY {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
    }

    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// The keep-alive of an idle pool whose user set `idle_timeout`.
    pub fn keep_alive(&self, idle_timeout: Duration) -> KeepAlive {
        if self.gaps.len() < MIN_GAPS {
            return KeepAlive {
                keep: idle_timeout,
                p5: None,
                p99: None,
            };
        }
        let mut sorted: Vec<Duration> = self.gaps.iter().copied().collect();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let (p5, p99) = (at(0.05), at(0.99));
        let keep = if p99 <= idle_timeout {
            p99.mul_f64(MARGIN).max(MIN_KEEP)
        } else if p5 > idle_timeout {
            STOP_AFTER
        } else {
            idle_timeout
        };
        KeepAlive {
            keep: keep.min(idle_timeout),
            p5: Some(p5),
            p99: Some(p99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(secs: &[f64]) -> Gaps {
        let mut g = Gaps::default();
        for s in secs {
            g.record(Duration::from_secs_f64(*s));
        }
        g
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn too_few_gaps_keep_the_users_idle_timeout() {
        assert_eq!(gaps(&[1.0; 7]).keep_alive(FIVE_MIN).keep, FIVE_MIN);
    }

    #[test]
    fn calls_every_two_minutes_keep_instances_a_little_over_two_minutes() {
        let k = gaps(&[
            110.0, 120.0, 130.0, 120.0, 115.0, 125.0, 120.0, 120.0, 118.0, 122.0,
        ])
        .keep_alive(FIVE_MIN);
        assert_eq!(k.p99, Some(Duration::from_secs(130)));
        assert_eq!(k.keep, Duration::from_secs_f64(130.0 * 1.25));
        // Gaps of a tight loop keep the floor, a minute.
        assert_eq!(gaps(&[0.001; 20]).keep_alive(FIVE_MIN).keep, MIN_KEEP);
    }

    #[test]
    fn calls_rarer_than_the_idle_timeout_stop_the_instance_at_once() {
        // An hourly job with the default five minutes: five idle minutes per hour for
        // nothing.
        let k = gaps(&[3600.0; 10]).keep_alive(FIVE_MIN);
        assert_eq!(k.keep, STOP_AFTER);
    }

    #[test]
    fn mixed_gaps_keep_the_idle_timeout_and_learning_never_exceeds_it() {
        let k =
            gaps(&[1.0, 2.0, 600.0, 1.0, 700.0, 3.0, 900.0, 2.0, 1.0, 800.0]).keep_alive(FIVE_MIN);
        assert_eq!(k.keep, FIVE_MIN);
        let short_timeout = gaps(&[0.5; 10]).keep_alive(Duration::from_millis(200));
        assert_eq!(short_timeout.keep, Duration::from_millis(200));
    }
}
