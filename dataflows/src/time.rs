//! Event-time arithmetic shared by every dataflow. Timestamps are milliseconds since the epoch
//! (the timely timestamp); windows are aligned to the UTC minute, hour and day.

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Start of the window of length `len_ms` that contains `t`.
pub fn window_start(t: u64, len_ms: u64) -> u64 {
    t - t % len_ms
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
}
