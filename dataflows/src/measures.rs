//! What a window row counts, as a differential difference: accumulating a row's updates gives
//! its measures, and a correction is just one more update.

use std::ops::{AddAssign, Neg};

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

use crate::invalid::{Reason, Reasons};

/// A row's counts. `clicks` is what advertisers pay for: deduplicated clicks with no invalid
/// reason. Invalid clicks are counted beside them, each once under its first reason, so
/// `clicks + invalid_total()` is every deduplicated click.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Measures {
    /// Billable clicks.
    pub clicks: i64,
    /// Clicks of an impression that already had its counted click.
    pub duplicates: i64,
    /// Invalid clicks by [`Reason`], indexed by its precedence.
    pub invalid: [i64; 7],
}

impl Measures {
    /// One deduplicated click with these reasons: billable when there are none.
    pub fn click(reasons: Reasons) -> Measures {
        let mut m = Measures::default();
        match reasons.first() {
            None => m.clicks = 1,
            Some(r) => m.invalid[r.index()] = 1,
        }
        m
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
        self.invalid[reason.index()]
    }

    /// Every invalid click, whatever its reason.
    pub fn invalid_total(&self) -> i64 {
        self.invalid.iter().sum()
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
        for i in &mut self.invalid {
            *i *= n;
        }
        self
    }
}

impl AddAssign<&Measures> for Measures {
    fn add_assign(&mut self, rhs: &Measures) {
        self.clicks += rhs.clicks;
        self.duplicates += rhs.duplicates;
        for (a, b) in self.invalid.iter_mut().zip(rhs.invalid) {
            *a += b;
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
        *self == Measures::default()
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
        *self = -*self;
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

    #[test]
    fn measures_form_a_group() {
        let a = Measures::click(Reasons::of([Reason::IpFlood])) + Measures::duplicates(2);
        let mut sum = a;
        sum.plus_equals(&-a);
        assert!(sum.is_zero());
        assert_eq!(a.times(3).invalid(Reason::IpFlood), 3);
        assert_eq!([a, a].into_iter().sum::<Measures>(), a.times(2));
    }
}
