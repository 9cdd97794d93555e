//! Invalid traffic: why a click is not billable (MRC's general and sophisticated invalid
//! traffic), as a closed list of reasons in their order of precedence.
//!
//! A click may have several reasons; it is counted once, under the first of them in
//! [`Reason::ALL`]'s order. The edge (the redirect) finds the first four from the raw request;
//! the dataflow finds the last three from the set of deduplicated clicks
//! ([`crate::flood`]) and from the token's impression time.

use serde::{Deserialize, Serialize};

/// One reason a click is invalid. The discriminant is the precedence (0 first) and the bit in
/// [`Reasons`]; the protobuf enum value is the discriminant + 1 (0 is `UNSPECIFIED` there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Reason {
    /// A declared bot or crawler user agent.
    KnownBot = 0,
    /// An IP address in a data-center range.
    Datacenter = 1,
    /// No user agent at all.
    NoUserAgent = 2,
    /// A headless browser's marker in the user agent.
    Headless = 3,
    /// Beyond the allowed clicks from one IP on one ad in one window.
    IpFlood = 4,
    /// Beyond the allowed clicks from one user on one campaign in one window.
    UserFlood = 5,
    /// Sooner after its impression was served than a person can click.
    TooFast = 6,
}

impl Reason {
    /// Every reason, in precedence order.
    pub const ALL: [Reason; 7] = [
        Reason::KnownBot,
        Reason::Datacenter,
        Reason::NoUserAgent,
        Reason::Headless,
        Reason::IpFlood,
        Reason::UserFlood,
        Reason::TooFast,
    ];

    /// The name in output lines, queries, metrics and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Reason::KnownBot => "known_bot",
            Reason::Datacenter => "datacenter",
            Reason::NoUserAgent => "no_user_agent",
            Reason::Headless => "headless",
            Reason::IpFlood => "ip_flood",
            Reason::UserFlood => "user_flood",
            Reason::TooFast => "too_fast",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The protobuf enum value (`adclick.v1.InvalidReason`).
    pub fn to_proto(self) -> i32 {
        self as i32 + 1
    }

    /// `None` for 0 and for values a newer writer added: an unknown reason is not a reason
    /// this build can count under.
    pub fn from_proto(value: i32) -> Option<Reason> {
        usize::try_from(value - 1)
            .ok()
            .and_then(|i| Reason::ALL.get(i).copied())
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A set of reasons, one bit each: fixed-size, so clicks carrying it stay `Copy`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Reasons(pub u8);

impl Reasons {
    pub const NONE: Reasons = Reasons(0);

    pub fn of(reasons: impl IntoIterator<Item = Reason>) -> Reasons {
        let mut set = Reasons::NONE;
        for r in reasons {
            set.insert(r);
        }
        set
    }

    pub fn insert(&mut self, r: Reason) {
        self.0 |= 1 << r as u8;
    }

    pub fn with(mut self, r: Reason) -> Reasons {
        self.insert(r);
        self
    }

    pub fn without(self, r: Reason) -> Reasons {
        Reasons(self.0 & !(1 << r as u8))
    }

    pub fn contains(self, r: Reason) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reason the click is counted under: the first in precedence order.
    pub fn first(self) -> Option<Reason> {
        Reason::ALL.get(self.0.trailing_zeros() as usize).copied()
    }

    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_proto_values_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.name()), Some(r));
            assert_eq!(Reason::from_proto(r.to_proto()), Some(r));
        }
        assert_eq!(Reason::from_proto(0), None);
        assert_eq!(Reason::from_proto(8), None);
        assert_eq!(Reason::from_proto(-5), None);
        assert_eq!(Reason::from_name("bot"), None);
    }

    #[test]
    fn a_click_counts_under_its_first_reason() {
        assert_eq!(Reasons::NONE.first(), None);
        let r = Reasons::of([Reason::TooFast, Reason::Headless, Reason::IpFlood]);
        assert_eq!(r.first(), Some(Reason::Headless));
        assert_eq!(r.without(Reason::Headless).first(), Some(Reason::IpFlood));
        assert_eq!(
            Reasons::of([Reason::TooFast]).first(),
            Some(Reason::TooFast)
        );
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [Reason::Headless, Reason::IpFlood, Reason::TooFast]
        );
    }
}
