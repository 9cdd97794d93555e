//! Distinct users as a mergeable sketch: an exact set of 64-bit user hashes while it is small,
//! a HyperLogLog of 2¹⁷ registers once it is not.
//!
//! Why our own and not a crate's (docs/design.md, "Unique users (reach)", has the comparison):
//! sketches are *data* in differential arrangements (retracted and inserted as they grow) and
//! cross the cluster, checkpoints and sinks, so a sketch must be `Ord + Hash + Eq` and its
//! representation a function of the set alone: the same users give the same value, whatever
//! the insertion order, the merge tree or the number of workers. None of the crates offers
//! that, and the whole algorithm is a hundred lines.
//!
//! - **Exact** up to [`EXACT_MAX`] users: the sorted hashes, 8 bytes a user; the estimate is
//!   the count (two users share a 64-bit hash with a chance of n²/2⁶⁵).
//! - **Dense** above: 2¹⁷ one-byte registers (128 KiB), estimated with Ertl's improved raw
//!   estimator ("New cardinality estimation algorithms for HyperLogLog sketches", 2017), which
//!   needs no empirical bias tables and is unbiased across the whole range. Relative standard
//!   error 1.04/√2¹⁷ = 0.29 %, so the 1 % the reach figures promise is 3.5 standard errors:
//!   about one estimate in 2,000 strays past it. (2¹⁵ registers, the first precision, had
//!   0.57 %: one estimate in twelve was off by more than 1 %.)
//!
//! Merging is a union (registers' maximum), so it is associative, commutative and idempotent:
//! a week's reach is the merge of seven day sketches, never a sum of counts. A dense sketch
//! of a smaller precision (checkpoints and sinks written with 2¹⁵) still merges: the finer one
//! is folded to the coarser precision, which gives exactly the registers the coarser sketch
//! would have built from the same users.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// log₂ of the register count dense sketches are built with.
pub const PRECISION: u32 = 17;
/// Registers of a dense sketch.
pub const REGISTERS: usize = 1 << PRECISION;
/// The smallest precision read back: what checkpoints and sinks of the first reach release
/// hold. Merged with a finer sketch it makes the union this coarse.
pub const MIN_PRECISION: u32 = 15;
/// Largest exact set: beyond it the exact list (8 bytes a user) would outgrow the dense
/// registers (1 byte each).
pub const EXACT_MAX: usize = REGISTERS / 8;
/// The dense sketch's relative standard error, 1.04 / √m.
pub const STANDARD_ERROR: f64 = 0.002_873;

/// The hash a user is counted by: `user` is already a 64-bit fingerprint (xxh3), mixed once
/// more (splitmix64's finalizer) so the registers do not depend on how the fingerprint is used
/// elsewhere.
pub fn user_hash(user: u64) -> u64 {
    let mut z = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A set of users, exactly or as a HyperLogLog. Equal sets have equal values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UserSketch {
    /// Sorted, distinct user hashes; at most [`EXACT_MAX`].
    Exact(Shared<u64>),
    /// 2ᵖ registers (p is [`PRECISION`], or down to [`MIN_PRECISION`] for a sketch from an
    /// older checkpoint), each the largest rank seen at its index.
    Dense(Shared<u8>),
}

/// A sketch's storage, shared by its copies until one of them changes (copy on write).
///
/// A growing sketch is data in a differential collection: each change is sent as the old
/// value's retraction and the new value's insertion, to every consumer (the arrangement
/// queries read, the final reports, the checkpoints' copies), and both wait in batchers until
/// they cancel. With the storage shared, the retraction is the value the arrangement already
/// holds and each consumer's copy is a pointer: a change costs one new value, not several
/// (on a stream spanning hours, copies of the open day sketches were most of the process's
/// memory). Serialized as the vector it holds: the same bytes as before it was shared.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shared<T>(Arc<Vec<T>>);

impl<T> std::ops::Deref for Shared<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Shared<T> {
    /// Copies the storage first if another copy of the sketch shares it.
    fn deref_mut(&mut self) -> &mut Vec<T> {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<Vec<T>> for Shared<T> {
    fn from(v: Vec<T>) -> Self {
        Shared(Arc::new(v))
    }
}

impl<'a, T> IntoIterator for &'a Shared<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Default for UserSketch {
    fn default() -> Self {
        UserSketch::Exact(Shared::default())
    }
}

/// The precision of a dense sketch's registers: log₂ of their number.
fn precision_of(registers: &[u8]) -> u32 {
    debug_assert!(registers.len().is_power_of_two());
    registers.len().trailing_zeros()
}

/// At precision `p`, a hash's register (its top `p` bits) and rank: 1 + the leading zeros of
/// the remaining `64 − p` bits, `64 − p + 1` when all of them are zero.
fn register(hash: u64, p: u32) -> (usize, u8) {
    let index = (hash >> (64 - p)) as usize;
    let rest = hash << p;
    let rank = if rest == 0 {
        64 - p + 1
    } else {
        rest.leading_zeros() + 1
    };
    (index, rank as u8)
}

/// The registers of precision `p` (at most the registers' own) that the same users give:
/// index bits below `p` become the first bits of the rank.
fn fold(registers: &[u8], p: u32) -> Vec<u8> {
    let shift = precision_of(registers) - p;
    if shift == 0 {
        return registers.to_vec();
    }
    let mut out = vec![0u8; 1 << p];
    for (i, &r) in registers.iter().enumerate() {
        if r == 0 {
            continue;
        }
        let low = (i & ((1 << shift) - 1)) as u32;
        let rank = if low == 0 {
            u32::from(r) + shift
        } else {
            low.leading_zeros() - (32 - shift) + 1
        };
        let j = i >> shift;
        out[j] = out[j].max(rank as u8);
    }
    out
}

impl UserSketch {
    /// The sketch of these user hashes (see [`user_hash`]), in any order, repeats allowed.
    pub fn of(mut hashes: Vec<u64>) -> Self {
        hashes.sort_unstable();
        hashes.dedup();
        if hashes.len() <= EXACT_MAX {
            UserSketch::Exact(hashes.into())
        } else {
            UserSketch::Dense(dense(&hashes).into())
        }
    }

    /// Adds these user hashes.
    pub fn extend(&mut self, hashes: Vec<u64>) {
        self.merge(&UserSketch::of(hashes));
    }

    /// The union of the two sets.
    pub fn merge(&mut self, other: &UserSketch) {
        match (&mut *self, other) {
            (_, UserSketch::Exact(b)) if b.is_empty() => {}
            (UserSketch::Exact(a), UserSketch::Exact(b)) => {
                let mut union = Vec::with_capacity(a.len() + b.len());
                let (mut i, mut j) = (0, 0);
                while i < a.len() && j < b.len() {
                    match a[i].cmp(&b[j]) {
                        std::cmp::Ordering::Less => {
                            union.push(a[i]);
                            i += 1;
                        }
                        std::cmp::Ordering::Greater => {
                            union.push(b[j]);
                            j += 1;
                        }
                        std::cmp::Ordering::Equal => {
                            union.push(a[i]);
                            i += 1;
                            j += 1;
                        }
                    }
                }
                union.extend_from_slice(&a[i..]);
                union.extend_from_slice(&b[j..]);
                *self = if union.len() <= EXACT_MAX {
                    UserSketch::Exact(union.into())
                } else {
                    UserSketch::Dense(dense(&union).into())
                };
            }
            (UserSketch::Dense(a), UserSketch::Exact(b)) => add(a, b),
            (UserSketch::Dense(a), UserSketch::Dense(b)) => {
                let (p, q) = (precision_of(a), precision_of(b));
                if p > q {
                    *a = fold(a, q).into();
                }
                let folded;
                let b: &[u8] = if q > p {
                    folded = fold(b, p);
                    &folded
                } else {
                    b
                };
                for (r, s) in a.iter_mut().zip(b) {
                    *r = (*r).max(*s);
                }
            }
            (UserSketch::Exact(a), UserSketch::Dense(b)) => {
                let mut registers = b.clone();
                add(&mut registers, a);
                *self = UserSketch::Dense(registers);
            }
        }
    }

    /// The number of distinct users: exact for an exact set, else the HyperLogLog estimate.
    pub fn estimate(&self) -> u64 {
        match self {
            UserSketch::Exact(h) => h.len() as u64,
            UserSketch::Dense(r) => estimate(r).round() as u64,
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, UserSketch::Exact(_))
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, UserSketch::Exact(h) if h.is_empty())
    }

    /// The sketch as bytes, the format the Parquet `reach` table, the `click-aggregates`
    /// topic and the NDJSON output carry (base64 there), stable for consumers that merge:
    ///
    /// - byte 0: `1` exact, `2` dense;
    /// - exact: then the sorted, distinct 64-bit user hashes, 8 bytes each, little-endian
    ///   (the estimate is their number);
    /// - dense: then byte 1 is the precision p (17; 15 in sketches written before) and 2ᵖ
    ///   register bytes follow, register `i` holding the largest rank seen at index `i` (a
    ///   hash's top p bits), the rank being 1 + the leading zeros of the remaining 64 − p
    ///   bits (64 − p + 1 when all are zero).
    ///
    /// Merging two sketches is the union of the user sets: two exact lists merge (turning
    /// dense past [`EXACT_MAX`] users: each hash sets its register), two dense ones take each
    /// register's maximum (the finer folded first to the coarser precision p: register `i`
    /// of the finer one, holding rank r, sets register `i >> d`, d the difference of the
    /// precisions, to 1 + the leading zeros of `i`'s low d bits, or to r + d when those bits
    /// are all zero), an exact one merges into a dense one by setting its hashes'
    /// registers. [`UserSketch::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            UserSketch::Exact(h) => {
                let mut b = Vec::with_capacity(1 + 8 * h.len());
                b.push(1);
                for x in h {
                    b.extend_from_slice(&x.to_le_bytes());
                }
                b
            }
            UserSketch::Dense(r) => {
                let mut b = Vec::with_capacity(2 + r.len());
                b.extend_from_slice(&[2, precision_of(r) as u8]);
                b.extend_from_slice(r);
                b
            }
        }
    }

    /// Reads [`UserSketch::to_bytes`]'s format back; an error says what is wrong with it.
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        match b.split_first() {
            Some((1, rest)) => {
                if rest.len() % 8 != 0 || rest.len() / 8 > EXACT_MAX {
                    return Err(format!("an exact sketch of {} bytes", rest.len()));
                }
                let h: Vec<u64> = rest
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                if h.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("an exact sketch's hashes are not sorted and distinct".into());
                }
                Ok(UserSketch::Exact(h.into()))
            }
            Some((2, rest)) => match rest.split_first() {
                Some((&p, r))
                    if (MIN_PRECISION..=PRECISION).contains(&u32::from(p)) && r.len() == 1 << p =>
                {
                    if r.iter().any(|x| u32::from(*x) > 64 - u32::from(p) + 1) {
                        return Err("a register above the largest rank".into());
                    }
                    Ok(UserSketch::Dense(r.to_vec().into()))
                }
                _ => Err(format!(
                    "a dense sketch must be of precision {MIN_PRECISION} to {PRECISION}, \
                     with 2^precision registers"
                )),
            },
            Some((k, _)) => Err(format!("unknown sketch kind {k}")),
            None => Err("an empty sketch".into()),
        }
    }

    /// What this sketch gained since `before`, an earlier value of the same growing set: the
    /// hashes an exact set gained, or the registers of a dense one that rose. `None` when it
    /// is not that (a different kind or precision, or a value `self` does not contain), or
    /// when the growth would not be smaller than the sketch itself. A checkpoint link writes
    /// an open window's sketch this way (chain.rs): at 2¹⁷ one-byte registers a dense sketch is
    /// 128 KiB, of which a few percent change between two checkpoints late in its window.
    pub fn growth_since(&self, before: &UserSketch) -> Option<Growth> {
        match (before, self) {
            (UserSketch::Exact(b), UserSketch::Exact(a)) => {
                let mut gained = Vec::with_capacity(a.len().saturating_sub(b.len()));
                let mut old = b.iter().peekable();
                for x in a {
                    match old.peek() {
                        Some(y) if *y < x => return None,
                        Some(y) if *y == x => {
                            old.next();
                        }
                        _ => gained.push(*x),
                    }
                }
                old.peek().is_none().then_some(Growth::Users(gained))
            }
            (UserSketch::Dense(b), UserSketch::Dense(a)) if a.len() == b.len() => {
                let (mut skips, mut values) = (Vec::new(), Vec::new());
                let mut next = 0;
                for (i, (old, new)) in b.iter().zip(a).enumerate() {
                    if new < old {
                        return None;
                    }
                    if new > old {
                        skips.push((i - next) as u32);
                        values.push(*new);
                        next = i + 1;
                    }
                }
                // Each rise costs a value byte and at least one byte of skip.
                (2 * values.len() < a.len()).then_some(Growth::Registers { skips, values })
            }
            _ => None,
        }
    }

    /// Applies [`UserSketch::growth_since`]'s growth: `before.grow(&now.growth_since(&before)?)`
    /// makes `before` equal to `now`. An error when the growth does not fit this sketch (a
    /// damaged or mismatched checkpoint).
    pub fn grow(&mut self, growth: &Growth) -> Result<(), String> {
        match (&mut *self, growth) {
            (UserSketch::Exact(_), Growth::Users(gained)) => {
                if gained.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("a growth's users are not sorted and distinct".into());
                }
                self.merge(&UserSketch::Exact(gained.clone().into()));
                Ok(())
            }
            (UserSketch::Dense(r), Growth::Registers { skips, values }) => {
                if skips.len() != values.len() {
                    return Err("a growth's registers and values differ in number".into());
                }
                let mut next = 0usize;
                for (skip, value) in skips.iter().zip(values) {
                    let i = next + *skip as usize;
                    let Some(register) = r.get_mut(i) else {
                        return Err(format!(
                            "a growth's register {i} past the sketch's {}",
                            r.len()
                        ));
                    };
                    *register = (*register).max(*value);
                    next = i + 1;
                }
                Ok(())
            }
            _ => Err("a growth of another kind than its sketch".into()),
        }
    }

    /// Heap bytes the sketch holds (its inline size is `size_of::<UserSketch>()`, 32 bytes).
    pub fn heap_bytes(&self) -> usize {
        match self {
            UserSketch::Exact(h) => h.capacity() * 8,
            UserSketch::Dense(r) => r.capacity(),
        }
    }
}

/// What a sketch gained since an earlier value ([`UserSketch::growth_since`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Growth {
    /// The hashes an exact set gained, sorted and distinct.
    Users(Vec<u64>),
    /// The registers of a dense sketch that rose, in index order, each index given as the
    /// registers skipped since the previous one (small numbers, one byte each in a
    /// checkpoint's encoding), with its new value.
    Registers { skips: Vec<u32>, values: Vec<u8> },
}

fn dense(hashes: &[u64]) -> Vec<u8> {
    let mut registers = vec![0; REGISTERS];
    add(&mut registers, hashes);
    registers
}

fn add(registers: &mut [u8], hashes: &[u64]) {
    let p = precision_of(registers);
    for h in hashes {
        let (i, rank) = register(*h, p);
        if registers[i] < rank {
            registers[i] = rank;
        }
    }
}

/// Ertl's improved raw estimator: α∞ m² / (m σ(C₀/m) + Σ_{k=1..q} C_k 2⁻ᵏ + m τ(1 − C_{q+1}/m) 2⁻q),
/// evaluated by Horner's scheme as in the paper (Algorithm 6).
fn estimate(registers: &[u8]) -> f64 {
    let q = 64 - precision_of(registers) as usize;
    let m = registers.len() as f64;
    let mut counts = vec![0u32; q + 2];
    for r in registers {
        counts[*r as usize] += 1;
    }
    let mut z = m * tau(1.0 - f64::from(counts[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(counts[k]));
    }
    z += m * sigma(f64::from(counts[0]) / m);
    let alpha_inf = 0.5 / std::f64::consts::LN_2;
    alpha_inf * m * m / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct users drawn from stream `seed` (distinct fingerprints, then hashed as the
    /// dataflow hashes them).
    fn users(seed: u64, n: u64) -> Vec<u64> {
        (0..n)
            .map(|i| user_hash(xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), seed)))
            .collect()
    }

    fn relative_error(sketch: &UserSketch, n: u64) -> f64 {
        (sketch.estimate() as f64 - n as f64) / n as f64
    }

    #[test]
    fn small_sets_are_exact() {
        for n in [0, 1, 2, 17, 1_000, EXACT_MAX as u64] {
            let mut hashes = users(7, n);
            hashes.extend(users(7, n / 2)); // repeats
            let s = UserSketch::of(hashes);
            assert!(s.is_exact(), "{n}");
            assert_eq!(s.estimate(), n);
        }
        let s = UserSketch::of(users(7, EXACT_MAX as u64 + 1));
        assert!(!s.is_exact());
        assert_eq!(s.heap_bytes(), REGISTERS);
    }

    /// The bound: at 10⁶ distinct users the error is at most 1 %. A HyperLogLog's
    /// error is a random variable (standard error 0.29 % here), so the test measures it over 8
    /// independent sets of 10⁶ users: each is within 1 % (3.5 standard errors), and their root
    /// mean square within 2 standard errors.
    #[test]
    fn error_at_a_million_users_is_at_most_one_percent() {
        let n = 1_000_000;
        let errors: Vec<f64> = (0..8)
            .map(|seed| relative_error(&UserSketch::of(users(seed, n)), n))
            .collect();
        let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        eprintln!("relative errors at 10^6: {errors:?}, rms {rms:.5}");
        assert!(rms <= 2.0 * STANDARD_ERROR, "rms error {rms}: {errors:?}");
        for e in &errors {
            assert!(e.abs() <= 0.01, "{e} over 1 %: {errors:?}");
        }
    }

    /// Between the exact range and 10⁶, and far beyond it, the estimator stays unbiased.
    #[test]
    fn the_estimate_is_close_over_the_whole_range() {
        for n in [EXACT_MAX as u64 + 1, 10_000, 50_000, 200_000, 5_000_000] {
            let e = relative_error(&UserSketch::of(users(n, n)), n);
            assert!(e.abs() <= 4.0 * STANDARD_ERROR, "n = {n}: {e}");
        }
    }

    /// A sketch grown by what it gained since an earlier value of its set is the later value,
    /// exact or dense, at every stage of a set's growth; a growth is offered only where it is
    /// smaller than the sketch.
    #[test]
    fn a_sketch_grown_by_its_growth_is_the_later_sketch() {
        let all = users(5, 400_000);
        let stages = [
            0,
            1,
            100,
            EXACT_MAX,
            EXACT_MAX + 1,
            60_000,
            100_000,
            390_000,
            400_000,
        ];
        for (i, &a) in stages.iter().enumerate() {
            for &b in &stages[i..] {
                let before = UserSketch::of(all[..a].to_vec());
                let after = UserSketch::of(all[..b].to_vec());
                let Some(growth) = after.growth_since(&before) else {
                    // Only across the exact-to-dense step, or when most registers rose.
                    let dense_rise = match (&before, &after) {
                        (UserSketch::Dense(x), UserSketch::Dense(y)) => {
                            2 * x.iter().zip(y).filter(|(x, y)| x != y).count() >= y.len()
                        }
                        _ => false,
                    };
                    assert!(
                        before.is_exact() != after.is_exact() || dense_rise,
                        "{a} to {b}"
                    );
                    continue;
                };
                let mut grown = before.clone();
                grown.grow(&growth).unwrap();
                assert_eq!(grown, after, "{a} to {b}");
                if let Growth::Registers { values, .. } = &growth {
                    assert!(2 * values.len() < REGISTERS, "{a} to {b}");
                }
            }
        }
        // Late in a large set, a growth is a small part of the sketch.
        let before = UserSketch::of(all[..390_000].to_vec());
        let Some(Growth::Registers { values, .. }) =
            UserSketch::of(all.clone()).growth_since(&before)
        else {
            panic!("a dense growth")
        };
        assert!(
            values.len() < REGISTERS / 20,
            "{} registers rose",
            values.len()
        );
    }

    /// A value that is not contained in the later one, or of another precision, has no growth;
    /// a growth that does not fit its sketch is an error, not a wrong sketch.
    #[test]
    fn only_an_earlier_value_of_the_same_set_has_a_growth() {
        let a = UserSketch::of(users(1, 100));
        let b = UserSketch::of(users(2, 100));
        assert_eq!(b.growth_since(&a), None);
        let big_a = UserSketch::of(users(1, 50_000));
        let big_b = UserSketch::of(users(2, 50_000));
        assert_eq!(big_b.growth_since(&big_a), None);
        let UserSketch::Dense(r) = &big_a else {
            panic!("dense")
        };
        let coarse = UserSketch::Dense(fold(r, MIN_PRECISION).into());
        assert_eq!(big_a.growth_since(&coarse), None);
        let mut exact = a.clone();
        assert!(
            exact
                .grow(&Growth::Registers {
                    skips: vec![0],
                    values: vec![1]
                })
                .is_err()
        );
        let mut dense = big_a.clone();
        let past = Growth::Registers {
            skips: vec![REGISTERS as u32],
            values: vec![1],
        };
        assert!(dense.grow(&past).is_err());
        assert!(dense.grow(&Growth::Users(vec![2, 1])).is_err());
        let unsorted = Growth::Users(vec![2, 1]);
        assert!(exact.grow(&unsorted).is_err());
        assert_eq!(exact, a);
    }

    /// Merging is a union: any split of a set into parts, merged in any order, gives the value
    /// the whole set gives (so a result never depends on workers or merge order), and a user
    /// in two parts counts once.
    #[test]
    fn merging_is_a_union_whatever_the_split_or_order() {
        for n in [10, EXACT_MAX as u64 - 5, 3 * EXACT_MAX as u64, 100_000] {
            let all = users(3, n);
            let whole = UserSketch::of(all.clone());
            for parts in [2usize, 3, 7] {
                let chunk = all.len().div_ceil(parts);
                let pieces: Vec<UserSketch> = all
                    .chunks(chunk)
                    // Overlapping parts: each also holds the first user of the next.
                    .enumerate()
                    .map(|(i, c)| {
                        let mut c = c.to_vec();
                        if let Some(next) = all.get((i + 1) * chunk) {
                            c.push(*next);
                        }
                        UserSketch::of(c)
                    })
                    .collect();
                let mut forwards = UserSketch::default();
                for p in &pieces {
                    forwards.merge(p);
                }
                let mut backwards = UserSketch::default();
                for p in pieces.iter().rev() {
                    backwards.merge(p);
                }
                assert_eq!(forwards, whole, "n = {n}, {parts} parts");
                assert_eq!(backwards, whole, "n = {n}, {parts} parts, reversed");
            }
            let mut twice = whole.clone();
            twice.merge(&whole);
            assert_eq!(twice, whole);
        }
    }

    /// A sketch at `p` as the first release built it (its registers straight from the users).
    fn dense_at(p: u32, hashes: &[u64]) -> UserSketch {
        let mut registers = vec![0; 1 << p];
        add(&mut registers, hashes);
        UserSketch::Dense(registers.into())
    }

    /// Folding a fine sketch gives the coarse one the same users build, so a sketch of the
    /// older precision (from a checkpoint or sink of the first release) merges with new ones
    /// into the coarse sketch of the union, in either order.
    #[test]
    fn a_sketch_of_the_older_precision_merges_as_its_union() {
        let a = users(21, 30_000);
        let b = users(22, 50_000);
        let fine = UserSketch::of(b.clone());
        let UserSketch::Dense(registers) = &fine else {
            panic!("50,000 users are dense")
        };
        assert_eq!(
            UserSketch::Dense(fold(registers, MIN_PRECISION).into()),
            dense_at(MIN_PRECISION, &b)
        );
        let union: Vec<u64> = a.iter().chain(&b).copied().collect();
        let want = dense_at(MIN_PRECISION, &union);
        let mut old_then_new = dense_at(MIN_PRECISION, &a);
        old_then_new.merge(&fine);
        assert_eq!(old_then_new, want);
        let mut new_then_old = fine.clone();
        new_then_old.merge(&dense_at(MIN_PRECISION, &a));
        assert_eq!(new_then_old, want);
        // An exact set merges into the old sketch at its precision.
        let mut old_then_exact = dense_at(MIN_PRECISION, &a);
        old_then_exact.merge(&UserSketch::of(b[..100].to_vec()));
        let small: Vec<u64> = a.iter().chain(&b[..100]).copied().collect();
        assert_eq!(old_then_exact, dense_at(MIN_PRECISION, &small));
        // And it reads back from its bytes, estimating within its own error.
        let old = dense_at(MIN_PRECISION, &union);
        assert_eq!(UserSketch::from_bytes(&old.to_bytes()), Ok(old.clone()));
        let e = relative_error(&old, union.len() as u64);
        assert!(
            e.abs() <= 3.0 * 1.04 / 2f64.powi(MIN_PRECISION as i32).sqrt(),
            "{e}"
        );
    }

    /// Copies share their storage; changing one copies it first, and leaves the others as
    /// they were. Serialized, a sketch is the vector it holds, as before the storage was shared.
    #[test]
    fn a_copy_shares_its_storage_until_one_changes() {
        let storage = |s: &UserSketch| match s {
            UserSketch::Exact(h) => h.as_ptr() as usize,
            UserSketch::Dense(r) => r.as_ptr() as usize,
        };
        for n in [100, 40_000] {
            let a = UserSketch::of(users(3, n));
            let mut b = a.clone();
            assert_eq!(storage(&a), storage(&b), "{n} users: a copy is a pointer");
            b.extend(users(4, 1_000));
            assert_ne!(storage(&a), storage(&b));
            assert_eq!(
                a,
                UserSketch::of(users(3, n)),
                "{n} users: the original is unchanged"
            );
            let mut both = users(3, n);
            both.extend(users(4, 1_000));
            assert_eq!(b, UserSketch::of(both));
        }
        let exact = UserSketch::of(vec![7, 9]);
        assert_eq!(
            postcard::to_allocvec(&exact).unwrap(),
            postcard::to_allocvec(&(0u32, vec![7u64, 9u64])).unwrap(),
            "the variant, then the vector"
        );
    }

    #[test]
    fn sketches_survive_serialization() {
        for n in [0, 5, 100_000] {
            let s = UserSketch::of(users(11, n));
            let bytes = postcard::to_allocvec(&s).expect("serialize");
            let back: UserSketch = postcard::from_bytes(&bytes).expect("deserialize");
            assert_eq!(back, s);
            assert_eq!(back.estimate(), s.estimate());
            let bytes = s.to_bytes();
            assert_eq!(UserSketch::from_bytes(&bytes), Ok(s.clone()));
            let expected = if s.is_exact() {
                1 + 8 * n as usize
            } else {
                2 + REGISTERS
            };
            assert_eq!(bytes.len(), expected);
        }
        for bad in [
            &[][..],
            &[3],
            &[1, 0, 0],
            &[2, 14, 0],
            &[2, 15, 0],
            &[2, 18, 0],
        ] {
            assert!(UserSketch::from_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
