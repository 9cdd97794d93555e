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

/// Crawlers' own user agents, drawn for invalid traffic (`--invalid`): unmistakable names
/// any bot list has, and scripted HTTP clients. Flagged `known_bot`; device `bot`.
pub const CRAWLER_USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/8.5.0",
    "python-requests/2.31.0",
];

/// Headless browsers: flagged `headless` (not `known_bot`); the device classifier calls them
/// `bot`.
pub const HEADLESS_USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
     HeadlessChrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     HeadlessChrome/123.0.6312.58 Safari/537.36",
];

/// IPv4 data-center ranges (network, prefix length) that invalid traffic clicks from, each
/// inside a range of `config/datacenter-cidrs.txt` (AWS, Google Cloud, Azure, DigitalOcean,
/// Hetzner, OVHcloud): the redirect flags them `datacenter` when it is given that file.
pub const DATACENTER_RANGES: &[([u8; 4], u8)] = &[
    ([3, 80, 0, 0], 12),
    ([34, 64, 0, 0], 10),
    ([13, 64, 0, 0], 11),
    ([104, 131, 0, 0], 16),
    ([159, 203, 0, 0], 16),
    ([88, 198, 0, 0], 16),
    ([145, 239, 0, 0], 16),
];

/// Address `n` (of 2^24) in [`DATACENTER_RANGES`], range by range.
pub fn datacenter_ip(n: u32) -> String {
    let (net, len) = DATACENTER_RANGES[n as usize % DATACENTER_RANGES.len()];
    let host_bits = 32 - u32::from(len);
    let host = (n / DATACENTER_RANGES.len() as u32) & ((1 << host_bits) - 1);
    std::net::Ipv4Addr::from(u32::from_be_bytes(net) | host).to_string()
}

/// The address of an actor of planted invalid traffic (a click farm's device, a user hopping
/// networks): one each, in 100.64.0.0/10 (carrier-grade NAT, shared by real subscribers, so
/// never a data center), apart from every simulated user's.
pub fn actor_ip(n: u32) -> String {
    std::net::Ipv4Addr::from(0x6440_0000 | (n & 0x003f_ffff)).to_string()
}

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
    fn invalid_agents_classify_as_intended() {
        for ua in CRAWLER_USER_AGENTS.iter().chain(HEADLESS_USER_AGENTS) {
            assert_eq!(device::classify(ua), Device::Bot, "{ua}");
        }
        for ua in HEADLESS_USER_AGENTS {
            assert!(ua.contains("HeadlessChrome"), "{ua}");
        }
        assert_eq!(device::classify(""), Device::Other);
    }

    /// Parses `config/datacenter-cidrs.txt` on its own (IPv4 lines), so the addresses drawn
    /// are checked against the file the redirect is given.
    fn sample_ranges() -> Vec<(u32, u32)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/datacenter-cidrs.txt");
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter_map(|l| l.split('#').next()?.split_whitespace().next())
            .filter_map(|cidr| {
                let (ip, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
                let ip: std::net::Ipv4Addr = ip.parse().ok()?;
                let len: u32 = len.parse().ok()?;
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Some((u32::from(ip) & mask, mask))
            })
            .collect()
    }

    fn in_sample(ip: &str, ranges: &[(u32, u32)]) -> bool {
        let ip = u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap());
        ranges.iter().any(|(net, mask)| ip & mask == *net)
    }

    #[test]
    fn datacenter_addresses_are_in_the_sample_file_and_no_one_else_is() {
        let ranges = sample_ranges();
        assert!(ranges.len() >= DATACENTER_RANGES.len());
        for n in (0..5_000).chain([u32::MAX, 1 << 23, 12_345_678]) {
            let ip = datacenter_ip(n);
            assert!(in_sample(&ip, &ranges), "{ip}");
            for other in [user_ip(n), actor_ip(n)] {
                assert!(!in_sample(&other, &ranges), "{other}");
            }
        }
        for ip in BOT_IPS.iter().chain(&["127.0.0.1"]) {
            assert!(!in_sample(ip, &ranges), "{ip}");
        }
        assert_eq!(actor_ip(0), "100.64.0.0");
        assert_eq!(actor_ip(0x40_0001), "100.64.0.1");
        assert_ne!(
            datacenter_ip(0),
            datacenter_ip(DATACENTER_RANGES.len() as u32)
        );
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
