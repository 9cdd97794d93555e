//! Event-time arithmetic shared by every dataflow. Timestamps are milliseconds since the epoch
//! (the timely timestamp); windows are aligned to the UTC minute, hour and day.

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Start of the window of length `len_ms` that contains `t`.
pub fn window_start(t: u64, len_ms: u64) -> u64 {
    t - t % len_ms
}

/// Start of the first window of length `len_ms` that a click at or after `frontier` can
/// still fall in, `allowed_lateness_ms` late at most: every window before it is complete.
pub fn open_from(len_ms: u64, frontier: u64, allowed_lateness_ms: u64) -> u64 {
    window_start(frontier.saturating_sub(allowed_lateness_ms), len_ms.max(1))
}

/// Rounds `t` down to a multiple of `tick_ms`. Sources stamp data and hold capabilities at
/// tick granularity so that the dataflow does work per tick, not per millisecond; window
/// boundaries are multiples of every tick we allow, so window membership is unchanged.
pub fn quantize(t: u64, tick_ms: u64) -> u64 {
    t - t % tick_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_half_open() {
        assert_eq!(window_start(0, MINUTE_MS), 0);
        assert_eq!(window_start(59_999, MINUTE_MS), 0);
        assert_eq!(window_start(60_000, MINUTE_MS), 60_000);
        assert_eq!(window_start(DAY_MS + 5, HOUR_MS), DAY_MS);
        assert_eq!(quantize(1_234, 100), 1_200);
        assert_eq!(quantize(1_234, 0), 1_234);
    }

    /// A click is at or after `open_from` exactly when its window is still open at the
    /// frontier: the window's end plus the lateness lies beyond it.
    #[test]
    fn open_from_is_where_open_windows_start() {
        for len in [1, 7, MINUTE_MS, HOUR_MS] {
            for lateness in [0, 5, 30_000, 300_000] {
                for frontier in [
                    0, 1, 4, 29_999, 59_999, 60_000, 360_001, 3_900_000, 7_300_000,
                ] {
                    let from = open_from(len, frontier, lateness);
                    for t in (0..8_000_000)
                        .step_by(997)
                        .chain([from.saturating_sub(1), from])
                    {
                        let open = window_start(t, len) + len + lateness > frontier;
                        assert_eq!(
                            t >= from,
                            open,
                            "len {len} late {lateness} f {frontier} t {t}"
                        );
                    }
                }
            }
        }
    }
}
