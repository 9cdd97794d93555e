//! What a window row counts, as a differential difference: accumulating a row's updates gives
//! its measures, and a correction is just one more update.

use std::ops::{AddAssign, Neg};

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

use crate::invalid::{Reason, Reasons};

/// A row's counts. `clicks` is what advertisers pay for: deduplicated clicks with no invalid
/// reason. Invalid clicks are counted beside them, each once under its first reason, so
/// `clicks + invalid_total()` is every deduplicated click.
///
/// 24 bytes: a row is held in several places (arrangements, reports, retention), and nearly
/// every row has no invalid click, so the seven per-reason counters live out of line, and
/// only for the rows that have one (they were 56 of the 72 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Measures {
    /// Billable clicks.
    pub clicks: i64,
    /// Clicks of an impression that already had its counted click.
    pub duplicates: i64,
    /// Invalid clicks by [`Reason`], indexed by its precedence; `None` when all are zero (the
    /// only form of zero, so equal measures are equal values).
    invalid: Option<Box<[i64; 7]>>,
}

// Ordered and serialized as the plain counters (clicks, duplicates, [i64; 7]): the order the
// derived one gave, and the form checkpoint parts have always held.
impl Ord for Measures {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.clicks, self.duplicates, self.invalid_counts()).cmp(&(
            other.clicks,
            other.duplicates,
            other.invalid_counts(),
        ))
    }
}

impl PartialOrd for Measures {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for Measures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Measures {
            clicks: i64,
            duplicates: i64,
            invalid: [i64; 7],
        }
        Measures {
            clicks: self.clicks,
            duplicates: self.duplicates,
            invalid: self.invalid_counts(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Measures {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Measures {
            clicks: i64,
            duplicates: i64,
            invalid: [i64; 7],
        }
        let m = Measures::deserialize(d)?;
        Ok(self::Measures::new(m.clicks, m.duplicates, m.invalid))
    }
}

impl Measures {
    /// These counts; `invalid` by [`Reason`] precedence.
    pub fn new(clicks: i64, duplicates: i64, invalid: [i64; 7]) -> Measures {
        Measures {
            clicks,
            duplicates,
            invalid: (invalid != [0; 7]).then(|| Box::new(invalid)),
        }
    }

    /// One deduplicated click with these reasons: billable when there are none.
    pub fn click(reasons: Reasons) -> Measures {
        let mut m = Measures::default();
        match reasons.first() {
            None => m.clicks = 1,
            Some(r) => m.add_invalid(r, 1),
        }
        m
    }

    /// Counts `n` more invalid clicks (fewer when negative) under `reason`.
    pub fn add_invalid(&mut self, reason: Reason, n: i64) {
        let counts = self.invalid.get_or_insert_with(Default::default);
        counts[reason.index()] += n;
        if **counts == [0; 7] {
            self.invalid = None;
        }
    }

    /// Invalid clicks by [`Reason`], indexed by its precedence.
    pub fn invalid_counts(&self) -> [i64; 7] {
        self.invalid.as_deref().copied().unwrap_or_default()
    }

    pub fn billable(clicks: i64) -> Measures {
        Measures {
            clicks,
            ..Measures::default()
        }
    }

    pub fn duplicates(duplicates: i64) -> Measures {
        Measures {
            duplicates,
            ..Measures::default()
        }
    }

    pub fn invalid(&self, reason: Reason) -> i64 {
        self.invalid.as_ref().map_or(0, |c| c[reason.index()])
    }

    /// Every invalid click, whatever its reason.
    pub fn invalid_total(&self) -> i64 {
        self.invalid.as_ref().map_or(0, |c| c.iter().sum())
    }

    /// The reasons with a count other than zero, in precedence order.
    pub fn invalid_by_reason(&self) -> impl Iterator<Item = (Reason, i64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.invalid(r)))
            .filter(|(_, n)| *n != 0)
    }

    /// Invalid clicks by reason name, as output lines and queries show them (reasons with
    /// none left out).
    pub fn invalid_names(&self) -> std::collections::BTreeMap<String, i64> {
        self.invalid_by_reason()
            .map(|(r, n)| (r.name().to_string(), n))
            .collect()
    }

    /// The inverse of [`Measures::invalid_names`]; names this build does not know (a newer
    /// writer's) are left out.
    pub fn invalid_from_names(by_name: &std::collections::BTreeMap<String, i64>) -> [i64; 7] {
        let mut out = [0; 7];
        for (name, n) in by_name {
            if let Some(r) = Reason::from_name(name) {
                out[r.index()] += n;
            }
        }
        out
    }

    /// These measures `n` times (a negative `n` retracts them).
    pub fn times(mut self, n: i64) -> Measures {
        self.clicks *= n;
        self.duplicates *= n;
        if n == 0 {
            self.invalid = None;
        }
        for i in self.invalid.iter_mut().flat_map(|c| c.iter_mut()) {
            *i *= n;
        }
        self
    }
}

impl AddAssign<&Measures> for Measures {
    fn add_assign(&mut self, rhs: &Measures) {
        self.clicks += rhs.clicks;
        self.duplicates += rhs.duplicates;
        let Some(b) = &rhs.invalid else { return };
        match &mut self.invalid {
            None => self.invalid = Some(b.clone()),
            Some(a) => {
                for (a, b) in a.iter_mut().zip(b.iter()) {
                    *a += b;
                }
                if **a == [0; 7] {
                    self.invalid = None;
                }
            }
        }
    }
}

impl AddAssign for Measures {
    fn add_assign(&mut self, rhs: Measures) {
        *self += &rhs;
    }
}

impl std::ops::Add for Measures {
    type Output = Measures;
    fn add(mut self, rhs: Measures) -> Measures {
        self += rhs;
        self
    }
}

impl Neg for Measures {
    type Output = Measures;
    fn neg(self) -> Measures {
        self.times(-1)
    }
}

impl std::iter::Sum for Measures {
    fn sum<I: Iterator<Item = Measures>>(iter: I) -> Measures {
        let mut total = Measures::default();
        for m in iter {
            total += m;
        }
        total
    }
}

impl IsZero for Measures {
    fn is_zero(&self) -> bool {
        self.clicks == 0 && self.duplicates == 0 && self.invalid.is_none()
    }
}

impl Semigroup for Measures {
    fn plus_equals(&mut self, rhs: &Self) {
        *self += rhs;
    }
}

impl Monoid for Measures {
    fn zero() -> Self {
        Measures::default()
    }
}

impl Abelian for Measures {
    fn negate(&mut self) {
        *self = std::mem::take(self).times(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_is_billable_or_invalid_once() {
        let billable = Measures::click(Reasons::NONE);
        assert_eq!((billable.clicks, billable.invalid_total()), (1, 0));
        let both = Measures::click(Reasons::of([Reason::TooFast, Reason::Datacenter]));
        assert_eq!(both.clicks, 0);
        assert_eq!(
            both.invalid_by_reason().collect::<Vec<_>>(),
            [(Reason::Datacenter, 1)]
        );
    }

    /// Invalid counts taken back to zero leave no counters behind: the measures equal (and
    /// hash like) zero, whichever way they got there.
    #[test]
    fn invalid_counts_back_at_zero_are_zero() {
        let mut m = Measures::default();
        m.add_invalid(Reason::IpFlood, 2);
        m.add_invalid(Reason::UserFlood, -1);
        assert_eq!(m.invalid_counts()[Reason::IpFlood.index()], 2);
        m.add_invalid(Reason::IpFlood, -2);
        m.add_invalid(Reason::UserFlood, 1);
        assert!(m.is_zero());
        assert_eq!(m, Measures::default());
        let mut sum = Measures::click(Reasons::of([Reason::IpFlood]));
        sum += Measures::click(Reasons::of([Reason::IpFlood])).times(-1);
        assert_eq!(sum, Measures::default());
    }

    /// The size the row budget counts on (a row is held in several places).
    #[test]
    fn measures_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Measures>(), 24);
    }

    /// Checkpoint parts hold measures as the plain counters, as before they were compacted:
    /// the serialized form is that of `(i64, i64, [i64; 7])`, and reads back canonical.
    #[test]
    fn measures_serialize_as_the_plain_counters() {
        let m = Measures::new(3, 1, [0, 2, 0, 0, 0, 0, 5]);
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(
            bytes,
            postcard::to_allocvec(&(3i64, 1i64, [0i64, 2, 0, 0, 0, 0, 5])).unwrap()
        );
        assert_eq!(postcard::from_bytes::<Measures>(&bytes).unwrap(), m);
        let zero = postcard::to_allocvec(&(0i64, 0i64, [0i64; 7])).unwrap();
        let back: Measures = postcard::from_bytes(&zero).unwrap();
        assert!(back.is_zero());
        assert_eq!(back, Measures::default());
    }

    #[test]
    fn measures_form_a_group() {
        let a = Measures::click(Reasons::of([Reason::IpFlood])) + Measures::duplicates(2);
        let mut sum = a.clone();
        sum.plus_equals(&-a.clone());
        assert!(sum.is_zero());
        assert_eq!(sum, Measures::default(), "zero has one form");
        assert_eq!(a.clone().times(3).invalid(Reason::IpFlood), 3);
        assert_eq!(
            [a.clone(), a.clone()].into_iter().sum::<Measures>(),
            a.times(2)
        );
    }
}
