//! Per-robot send budget: a sliding window over the times of past requests, and a pace.
//!
//! WeCom allows a group robot 20 messages a minute (群机器人配置说明, "消息发送频率限制": 每个机器人
//! 发送的消息不能超过20条/分钟). Whether WeCom counts per calendar minute or over a sliding minute
//! is not documented; a sliding window is the stricter of the two, so keeping to it satisfies
//! either. Every request counts, retries included, because the server cannot tell them apart.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Margin added to the window: the server sees our requests after a network delay that varies,
/// so two requests exactly one window apart on our clock may land slightly closer on its clock.
pub(crate) const SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// At most `max` requests in any `window` (plus [`SAFETY_MARGIN`]), and consecutive requests at
/// least `window / (max - 1)` apart.
///
/// The window alone would let a sender spend the whole minute's budget on the first hits of a
/// flood, one message each, and then need more messages after the minute for the rest. Spacing
/// the requests means the messages for hits arriving over one minute, however spread, number at
/// most `max`: the request after the last hit is at most `ceil(60 / interval) = max - 1`
/// intervals after the first. The pace also keeps retries from bunching up.
#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    window: Duration,
    interval: Duration,
    /// Times of the last `max` requests, oldest first.
    sent: VecDeque<Instant>,
}

impl Budget {
    pub(crate) fn new(max: usize, window: Duration) -> Self {
        let max = max.max(1);
        let window = window + SAFETY_MARGIN;
        let interval = match max {
            1 => window,
            n => window / (n as u32 - 1),
        };
        Self {
            max,
            window,
            interval,
            sent: VecDeque::with_capacity(max),
        }
    }

    /// The earliest instant at which one more request keeps within the budget and the pace
    /// (`now` when it may go at once).
    pub(crate) fn ready_at(&self, now: Instant) -> Instant {
        let Some(last) = self.sent.back() else {
            return now;
        };
        let mut at = (*last + self.interval).max(now);
        if self.sent.len() >= self.max {
            // The oldest of the last `max` requests must have left the window.
            at = at.max(self.sent[self.sent.len() - self.max] + self.window);
        }
        at
    }

    /// Records a request made at `at`. Callers check [`Budget::ready_at`] first.
    pub(crate) fn record(&mut self, at: Instant) {
        debug_assert!(self.ready_at(at) <= at, "request over budget");
        self.sent.push_back(at);
        while self.sent.len() > self.max {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a sequence of request times and checks every window of 60 s holds at most `max`.
    fn assert_within(times: &[Instant], max: usize, window: Duration) {
        for (i, start) in times.iter().enumerate() {
            let n = times[i..]
                .iter()
                .take_while(|t| **t - *start <= window)
                .count();
            assert!(n <= max, "{n} requests within {window:?} of request {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_in_any_window() {
        let mut budget = Budget::new(20, Duration::from_secs(60));
        let start = Instant::now();
        let mut times = Vec::new();
        // Greedy sender: 100 requests as fast as the budget allows.
        let mut now = start;
        for _ in 0..100 {
            now = budget.ready_at(now);
            budget.record(now);
            times.push(now);
        }
        assert_within(&times, 20, Duration::from_secs(60));
        // Paced 61 s / 19 apart: the 20th request is the last within the first 61 s.
        let interval = (Duration::from_secs(60) + SAFETY_MARGIN) / 19;
        assert_eq!(times[1], start + interval);
        assert_eq!(times[19], start + interval * 19);
        assert!(times[19] - start >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_of_arrivals_needs_at_most_max_requests() {
        // A request whenever something arrived since the last one and the budget allows:
        // arrivals every 100 ms for a minute.
        let mut budget = Budget::new(20, Duration::from_secs(60));
        let t0 = Instant::now();
        let arrivals: Vec<Instant> = (0..600)
            .map(|i| t0 + Duration::from_millis(100 * i))
            .collect();
        let (mut sent, mut covered, mut now) = (0, 0, t0);
        while covered < arrivals.len() {
            now = budget.ready_at(now.max(arrivals[covered]));
            budget.record(now);
            sent += 1;
            covered = arrivals.iter().take_while(|a| **a <= now).count();
        }
        assert!(sent <= 20, "{sent} requests");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_a_request_goes_at_once() {
        let mut budget = Budget::new(20, Duration::from_secs(60));
        let t0 = Instant::now();
        budget.record(t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(budget.ready_at(later), later);
        // Right after a request, the next waits for the pace.
        budget.record(later);
        assert!(budget.ready_at(later) > later);
    }
}
