//! Who clicks: where they are, what they click with, and the crawlers among them. The truth
//! records the country and device chosen here, never what the pipeline's classifier makes of
//! the user agent, so a classifier regression shows up as a mismatch instead of being copied
//! into the oracle.

use crate::event::Device;

/// Countries and their relative weights. `ZZ` (unknown) is in the mix on purpose: real edges
/// fail to geolocate a few percent of clicks.
pub const COUNTRIES: &[(&str, u32)] = &[
    ("US", 30),
    ("GB", 10),
    ("DE", 10),
    ("FR", 8),
    ("IN", 10),
    ("BR", 8),
    ("JP", 8),
    ("CA", 6),
    ("AU", 5),
    ("ZZ", 5),
];

/// Human device classes and their relative weights; bots are drawn separately.
pub const DEVICES: &[(Device, u32)] = &[
    (Device::Mobile, 55),
    (Device::Desktop, 35),
    (Device::Tablet, 7),
    (Device::Other, 3),
];

/// Representative user agents of a human device class.
pub fn user_agents(device: Device) -> &'static [&'static str] {
    match device {
        Device::Mobile => &[
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.6367.82 Mobile Safari/537.36",
            "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
        ],
        Device::Desktop => &[
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        ],
        Device::Tablet => &[
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
        ],
        Device::Other => &[
            "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/13.0 Safari/605.1.15",
            "Roku/DVP-12.5 (12.5.0.4174-56)",
        ],
        Device::Bot => BOT_USER_AGENTS,
    }
}

pub const BOT_USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "python-requests/2.31.0",
    "curl/8.5.0",
];

/// The few addresses bot traffic comes from: crawlers are concentrated, people are not.
pub const BOT_IPS: &[&str] = &["66.249.66.1", "66.249.66.7", "40.77.167.12", "52.14.200.9"];

/// The address of simulated user `n`: one per user, in the 10.0.0.0/8 private range.
pub fn user_ip(n: u32) -> String {
    let [_, b, c, d] = n.to_be_bytes();
    format!("10.{b}.{c}.{d}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{country, device};

    #[test]
    fn every_user_agent_classifies_as_intended() {
        for d in Device::ALL {
            assert!(!user_agents(d).is_empty());
            for ua in user_agents(d) {
                assert_eq!(device::classify(ua), d, "{ua}");
            }
        }
        assert!(DEVICES.iter().all(|(d, _)| *d != Device::Bot));
    }

    #[test]
    fn countries_are_canonical_codes() {
        for (c, w) in COUNTRIES {
            assert_eq!(country::normalize(c), Some(*c));
            assert!(*w > 0);
        }
    }

    #[test]
    fn user_ips_are_distinct_and_valid() {
        assert_eq!(user_ip(0), "10.0.0.0");
        assert_eq!(user_ip(65_793), "10.1.1.1");
        for ip in [user_ip(123_456), BOT_IPS[0].to_string()] {
            ip.parse::<std::net::Ipv4Addr>().unwrap();
        }
    }
}
