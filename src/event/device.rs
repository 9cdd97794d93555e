//! Device class, a reporting and billing dimension, guessed from the User-Agent header.
//!
//! [`classify`] runs on every click in the redirect's hot path, so it is a handful of
//! case-insensitive substring tests over the raw header: no allocation, no regex, no parsing.
//! The rules are deliberately coarse and ordered (bot, tablet, mobile, desktop): a crawler
//! pretending to be an iPhone is still a crawler, and an iPad is not a phone even though its
//! header says "Mobile".

use std::fmt;
use std::str::FromStr;

/// The class of device a click came from. The protobuf numbering lives in
/// [`super::device_to_proto`]; the names below are the JSON and report spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Mobile,
    Desktop,
    Tablet,
    Bot,
    Other,
}

impl Device {
    /// Every variant, in declaration order.
    pub const ALL: [Device; 5] = [
        Device::Mobile,
        Device::Desktop,
        Device::Tablet,
        Device::Bot,
        Device::Other,
    ];

    /// The lowercase name used in JSON, reports and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Desktop => "desktop",
            Device::Tablet => "tablet",
            Device::Bot => "bot",
            Device::Other => "other",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device name that is not one of [`Device::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDevice(pub String);

impl fmt::Display for UnknownDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown device {:?} (expected mobile, desktop, tablet, bot or other)",
            self.0
        )
    }
}

impl std::error::Error for UnknownDevice {}

impl FromStr for Device {
    type Err = UnknownDevice;

    /// Exact lowercase names only: these come from our own JSON, so any other spelling is a
    /// bug worth surfacing rather than guessing at.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Device::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDevice(s.to_string()))
    }
}

// Every needle must be lowercase ASCII: `contains_ci` folds only the haystack's case.

/// Crawlers, link previewers, headless browsers and HTTP libraries. Checked first because
/// many of them borrow a phone or desktop header and append their own name.
const BOT: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww",
    "httpclient",
    "scrapy",
    "phantomjs",
    "facebookexternalhit",
    "preview",
];

/// Tablets; Android tablets are recognized separately, by "android" without "mobile".
const TABLET: &[&str] = &["ipad", "tablet", "kindle", "silk/", "playbook"];

const MOBILE: &[&str] = &[
    "mobi",
    "iphone",
    "ipod",
    "android",
    "windows phone",
    "blackberry",
    "opera mini",
];

/// "cros " with its space, as ChromeOS writes it ("X11; CrOS x86_64"), so that "Microsoft"
/// does not read as a Chromebook.
const DESKTOP: &[&str] = &[
    "windows nt",
    "macintosh",
    "mac os x",
    "x11",
    "linux",
    "cros ",
];

/// The device class of a User-Agent header. Case-insensitive; empty or unrecognized
/// headers are [`Device::Other`].
pub fn classify(user_agent: &str) -> Device {
    if user_agent.is_empty() {
        return Device::Other;
    }
    // Folding case once into a stack buffer lets every needle use std's substring search
    // (SIMD-accelerated on common targets), several times faster than folding per compare.
    let mut buf = [0u8; LOWERCASE_BUF];
    match ascii_lowercase_into(user_agent, &mut buf) {
        Some(lower) => apply_rules(|needle| lower.contains(needle)),
        None => apply_rules(|needle| contains_ci(user_agent.as_bytes(), needle.as_bytes())),
    }
}

/// Longest header [`classify`] folds on the stack; real ones are a few hundred bytes, and
/// longer ones take the slower byte-by-byte path rather than allocating.
const LOWERCASE_BUF: usize = 512;

/// The rules, in order, given a case-insensitive "contains" for lowercase needles.
fn apply_rules(contains: impl Fn(&str) -> bool) -> Device {
    let any = |needles: &[&str]| needles.iter().any(|n| contains(n));
    if any(BOT) {
        Device::Bot
    } else if any(TABLET) || (contains("android") && !contains("mobile")) {
        Device::Tablet
    } else if any(MOBILE) {
        Device::Mobile
    } else if any(DESKTOP) {
        Device::Desktop
    } else {
        Device::Other
    }
}

/// `s` with ASCII letters lowercased, in `buf`; `None` if it does not fit. Folding only ASCII
/// bytes keeps UTF-8 valid, so the check at the end cannot fail.
fn ascii_lowercase_into<'a>(s: &str, buf: &'a mut [u8; LOWERCASE_BUF]) -> Option<&'a str> {
    let out = buf.get_mut(..s.len())?;
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// Whether `haystack` contains `needle` ignoring ASCII case; `needle` must be lowercase.
/// Matching bytes, not chars, is sound: a multi-byte UTF-8 sequence has no ASCII bytes in it,
/// so an ASCII needle can only match whole ASCII characters.
fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    haystack[..=last_start].iter().enumerate().any(|(i, &b)| {
        b.to_ascii_lowercase() == first
            && haystack[i + 1..i + needle.len()].eq_ignore_ascii_case(rest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
        (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const SAFARI_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) \
        AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
    const FIREFOX_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const CHROMEBOOK: &str = "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 \
        (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) \
        AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const ANDROID_PHONE_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) \
        AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36";
    const ANDROID_PHONE_FIREFOX: &str =
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0";
    const WINDOWS_PHONE: &str = "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; \
        Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 \
        Mobile Safari/537.36 Edge/15.14977";
    const OPERA_MINI: &str = "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; \
        Opera Mobi/23.348; U; en) Presto/2.5.25 Version/10.54";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
        (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 \
        (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const KINDLE_FIRE: &str = "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT \
        Build/IML74K) AppleWebKit/537.36 (KHTML, like Gecko) Silk/3.68 like \
        Chrome/39.0.2171.93 Safari/537.36";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const GOOGLEBOT_SMARTPHONE: &str = "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X \
        Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile \
        Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const HEADLESS_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
        (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36";

    #[test]
    fn desktops() {
        for ua in [CHROME_WINDOWS, SAFARI_MAC, FIREFOX_LINUX, CHROMEBOOK] {
            assert_eq!(classify(ua), Device::Desktop, "{ua}");
        }
    }

    #[test]
    fn phones() {
        for ua in [
            IPHONE_SAFARI,
            ANDROID_PHONE_CHROME,
            ANDROID_PHONE_FIREFOX,
            WINDOWS_PHONE,
            OPERA_MINI,
        ] {
            assert_eq!(classify(ua), Device::Mobile, "{ua}");
        }
    }

    #[test]
    fn tablets() {
        for ua in [IPAD, ANDROID_TABLET, KINDLE_FIRE] {
            assert_eq!(classify(ua), Device::Tablet, "{ua}");
        }
    }

    #[test]
    fn bots_win_over_the_device_they_imitate() {
        for ua in [
            GOOGLEBOT,
            GOOGLEBOT_SMARTPHONE,
            HEADLESS_CHROME,
            "curl/8.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
            "Go-http-client/1.1",
            "okhttp/4.12.0",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        ] {
            assert_eq!(classify(ua), Device::Bot, "{ua}");
        }
    }

    #[test]
    fn others() {
        for ua in [
            "",
            "Mozilla/5.0",
            "   ",
            "Microsoft-CryptoAPI/10.0",
            "Ünïcödé ☃ 📱",
        ] {
            assert_eq!(classify(ua), Device::Other, "{ua:?}");
        }
    }

    #[test]
    fn case_insensitive() {
        assert_eq!(classify("MOZILLA/5.0 (IPHONE)"), Device::Mobile);
        assert_eq!(classify("googlebot"), Device::Bot);
        assert_eq!(classify(&CHROME_WINDOWS.to_lowercase()), Device::Desktop);
        assert_eq!(classify(&IPAD.to_uppercase()), Device::Tablet);
    }

    #[test]
    fn long_headers_classify_the_same() {
        for ua in [
            CHROME_WINDOWS,
            IPHONE_SAFARI,
            ANDROID_TABLET,
            GOOGLEBOT,
            "Mozilla/5.0",
        ] {
            for pad in [LOWERCASE_BUF - ua.len(), LOWERCASE_BUF + 1 - ua.len(), 2000] {
                let long = format!("{ua}{}", " ~".repeat(pad).split_at(pad).0);
                assert_eq!(classify(&long), classify(ua), "{ua} + {pad}");
            }
        }
        // Non-ASCII past the buffer's end, and a needle straddling it.
        let mut long = "é".repeat(LOWERCASE_BUF / 2 - 1);
        long.push_str("iPhone");
        assert_eq!(classify(&long), Device::Mobile);
    }

    #[test]
    fn needles_are_lowercase_ascii() {
        for needle in [BOT, TABLET, MOBILE, DESKTOP].concat() {
            assert!(!needle.is_empty());
            assert!(
                needle
                    .bytes()
                    .all(|b| b.is_ascii() && !b.is_ascii_uppercase()),
                "{needle}"
            );
        }
    }

    #[test]
    fn contains_ci_edges() {
        assert!(contains_ci(b"abc", b""));
        assert!(contains_ci(b"ABC", b"abc"));
        assert!(contains_ci(b"xxABC", b"abc"));
        assert!(contains_ci(b"ABCxx", b"abc"));
        assert!(!contains_ci(b"AB", b"abc"));
        assert!(!contains_ci(b"", b"a"));
        assert!(!contains_ci(b"abdabd", b"abc"));
    }

    #[test]
    fn names_round_trip() {
        for d in Device::ALL {
            assert_eq!(d.as_str().parse::<Device>(), Ok(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        let err = "Mobile".parse::<Device>().unwrap_err();
        assert_eq!(err, UnknownDevice("Mobile".into()));
        assert_eq!(
            err.to_string(),
            r#"unknown device "Mobile" (expected mobile, desktop, tablet, bot or other)"#
        );
        assert!("".parse::<Device>().is_err());
    }
}
