//! Helpers for this crate's unit tests.

/// A seeded pseudo-random source for randomized tests (a 64-bit LCG's high bits): the same
/// seed gives the same cases on every machine, so a failure can be replayed. `next(m)` is in
/// `0..m`.
pub fn numbers(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |m| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % m
    }
}
