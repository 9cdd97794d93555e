//! Invalid traffic the edge can see (MRC's general invalid traffic, GIVT): declared bots and
//! crawlers, headless browsers, requests without a user agent, and clients in data-center
//! address ranges. The redirect classifies every click here from the raw user agent and
//! client IP, before the IP is hashed; the aggregator applies [`user_agent_reasons`] itself to
//! events nobody classified (older writers).
//!
//! Classification flags, it never refuses: the click is redirected and counted, under its
//! reasons (see `adclick_dataflows::invalid`).
//!
//! The bot list is `config/bots.txt`, compiled in, plus an optional file of the same format
//! (`redirect.extra_bots_file`); the data-center ranges come from a CIDR file
//! (`redirect.datacenter_cidrs_file`, sample in `config/datacenter-cidrs.txt`). Both are read
//! once at start; a click costs one automaton pass over its user agent and one binary search.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::LazyLock;

use adclick_dataflows::invalid::{Reason, Reasons};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use anyhow::Context;

/// The maintained bot and crawler list (format in the file's header).
pub const BUILTIN_BOTS: &str = include_str!("../../config/bots.txt");
/// The sample data-center ranges shipped in `config/` (for the demo, tests and load
/// generator; not a complete list).
pub const SAMPLE_DATACENTER_CIDRS: &str = include_str!("../../config/datacenter-cidrs.txt");

/// Markers of headless and automated browsers. They borrow a real browser's user agent and
/// add one of these (Chrome's headless mode, PhantomJS, SlimerJS, HtmlUnit, jsdom; Puppeteer
/// and Playwright when a script names itself).
const HEADLESS: &[&str] = &[
    "headless",
    "phantomjs",
    "slimerjs",
    "htmlunit",
    "jsdom/",
    "puppeteer",
    "playwright",
];

/// Stand for the start and the end of the user agent in the searched text, so that list
/// entries can be anchored (`^curl`, `bot$`). Control characters: a header value cannot hold
/// them.
const START: char = '\u{2}';
const END: char = '\u{3}';

/// Shortest list entry (anchors aside): a shorter one would flag half the world.
pub const MIN_ENTRY_LEN: usize = 3;

/// A list line that cannot be used; names the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct ListError {
    pub line: usize,
    pub problem: String,
}

/// The user-agent rules: known bots (with exceptions) and headless markers.
pub struct UserAgentRules {
    /// Bot markers, then exceptions, in one leftmost-longest automaton: at any position the
    /// longest entry wins, so an exception (`cubot`) shields the markers that start inside
    /// it (`bot `) while a marker elsewhere in the user agent still counts.
    bots: AhoCorasick,
    /// Entries below this index are markers, the rest exceptions.
    markers: usize,
    headless: AhoCorasick,
}

impl UserAgentRules {
    /// The built-in list ([`BUILTIN_BOTS`]) and markers, compiled once.
    pub fn builtin() -> &'static UserAgentRules {
        static RULES: LazyLock<UserAgentRules> = LazyLock::new(|| {
            UserAgentRules::new(&[BUILTIN_BOTS]).expect("config/bots.txt is valid")
        });
        &RULES
    }

    /// Rules from bot lists in the `config/bots.txt` format, taken together.
    pub fn new(lists: &[&str]) -> Result<Self, ListError> {
        let mut markers = Vec::new();
        let mut exceptions = Vec::new();
        for list in lists {
            for (i, raw) in list.lines().enumerate() {
                let entry = raw.strip_suffix('\r').unwrap_or(raw);
                if entry.trim().is_empty() || entry.trim_start().starts_with('#') {
                    continue;
                }
                let (target, text) = match entry.strip_prefix('!') {
                    Some(text) => (&mut exceptions, text),
                    None => (&mut markers, entry),
                };
                target.push(pattern(text).map_err(|problem| ListError {
                    line: i + 1,
                    problem,
                })?);
            }
        }
        let count = markers.len();
        markers.extend(exceptions);
        let bots = automaton(&markers);
        Ok(Self {
            bots,
            markers: count,
            headless: automaton(HEADLESS),
        })
    }

    /// The built-in list plus, if given, a file of the same format.
    pub fn with_extra_file(path: Option<&Path>) -> anyhow::Result<Self> {
        let extra = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading bot list {}", p.display()))?,
            None => String::new(),
        };
        UserAgentRules::new(&[BUILTIN_BOTS, &extra]).map_err(|e| {
            let file = path.map_or("?".into(), |p| p.display().to_string());
            anyhow::anyhow!("bot list {file}: {e}")
        })
    }

    /// The reasons a user agent alone gives: `no_user_agent` for an empty (or blank) one,
    /// else `known_bot` and `headless` as its markers say.
    pub fn reasons(&self, user_agent: &str) -> Reasons {
        if user_agent.trim().is_empty() {
            return Reasons::NONE.with(Reason::NoUserAgent);
        }
        let mut reasons = Reasons::NONE;
        let mut text = String::with_capacity(user_agent.len() + 2);
        text.push(START);
        text.push_str(user_agent);
        text.push(END);
        if self
            .bots
            .find_iter(&text)
            .any(|m| m.pattern().as_usize() < self.markers)
        {
            reasons.insert(Reason::KnownBot);
        }
        if self.headless.is_match(user_agent) {
            reasons.insert(Reason::Headless);
        }
        reasons
    }
}

/// A list entry as searched: anchors become the sentinels.
fn pattern(entry: &str) -> Result<String, String> {
    let (start, rest) = match entry.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let (text, end) = match rest.strip_suffix('$') {
        Some(text) => (text, true),
        None => (rest, false),
    };
    if text.len() < MIN_ENTRY_LEN {
        return Err(format!(
            "{entry:?} is shorter than {MIN_ENTRY_LEN} bytes (anchors aside)"
        ));
    }
    if text.contains([START, END]) {
        return Err(format!("{entry:?} contains control characters"));
    }
    let mut out = String::with_capacity(text.len() + 2);
    if start {
        out.push(START);
    }
    out.push_str(text);
    if end {
        out.push(END);
    }
    Ok(out)
}

fn automaton<P: AsRef<[u8]>>(patterns: &[P]) -> AhoCorasick {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(patterns)
        .expect("literal patterns of bounded size build")
}

/// The user-agent rules of the built-in list: what the aggregator applies to events nobody
/// classified.
pub fn user_agent_reasons(user_agent: &str) -> Reasons {
    UserAgentRules::builtin().reasons(user_agent)
}

/// Data-center address ranges, IPv4 and IPv6, merged and sorted for binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatacenterRanges {
    /// Inclusive `[first, last]` address ranges, sorted, disjoint and not adjacent.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl DatacenterRanges {
    /// Parses a CIDR file (format in `config/datacenter-cidrs.txt`).
    pub fn parse(text: &str) -> Result<Self, ListError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let Some(token) = raw.split_whitespace().next() else {
                continue;
            };
            if token.starts_with('#') {
                continue;
            }
            let problem = |p: String| ListError {
                line: i + 1,
                problem: p,
            };
            let (addr, len) = match token.split_once('/') {
                Some((a, l)) => (
                    a,
                    Some(
                        l.parse::<u32>()
                            .map_err(|_| problem(format!("{token:?}: bad prefix length")))?,
                    ),
                ),
                None => (token, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| problem(format!("{token:?} is not an IP address or CIDR")))?;
            match addr {
                IpAddr::V4(a) => {
                    let len = len.unwrap_or(32);
                    if len > 32 {
                        return Err(problem(format!("{token:?}: prefix longer than 32")));
                    }
                    let host = u32::MAX.checked_shr(len).unwrap_or(0);
                    let first = u32::from(a) & !host;
                    v4.push((first, first | host));
                }
                IpAddr::V6(a) => {
                    let len = len.unwrap_or(128);
                    if len > 128 {
                        return Err(problem(format!("{token:?}: prefix longer than 128")));
                    }
                    let host = u128::MAX.checked_shr(len).unwrap_or(0);
                    let first = u128::from(a) & !host;
                    v6.push((first, first | host));
                }
            }
        }
        Ok(Self {
            v4: merge(v4),
            v6: merge(v6),
        })
    }

    /// Reads and parses a CIDR file; the error names the file and the line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading data-center ranges {}", path.display()))?;
        Self::parse(&text)
            .map_err(|e| anyhow::anyhow!("data-center ranges {}: {e}", path.display()))
    }

    /// Whether the address is in a range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
    /// a dual-stack socket reports IPv4 peers) is judged as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }

    /// Disjoint ranges held (after merging overlaps and neighbours).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if prev.1.succ().is_none_or(|next| first <= next) => {
                prev.1 = prev.1.max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// The next value, `None` at the top.
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// An address as an ingest path got it: an IP, or an `ip:port` / `[ipv6]:port` socket
/// address (some proxies write those); `None` for anything else.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    t.parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Everything the edge classifies by.
pub struct Classifier {
    user_agents: UserAgentRules,
    datacenter: DatacenterRanges,
}

impl Classifier {
    pub fn new(user_agents: UserAgentRules, datacenter: DatacenterRanges) -> Self {
        Self {
            user_agents,
            datacenter,
        }
    }

    /// From `redirect.extra_bots_file` and `redirect.datacenter_cidrs_file`; errors name the
    /// key, the file and the line.
    pub fn from_config(config: &crate::config::RedirectConfig) -> anyhow::Result<Self> {
        let user_agents = UserAgentRules::with_extra_file(config.extra_bots_file.as_deref())
            .context("redirect.extra_bots_file")?;
        let datacenter = match &config.datacenter_cidrs_file {
            Some(path) => DatacenterRanges::load(path).context("redirect.datacenter_cidrs_file")?,
            None => DatacenterRanges::default(),
        };
        Ok(Self::new(user_agents, datacenter))
    }

    /// The reasons a click is invalid, from what the ingest path saw. `None` means the path
    /// does not see that value (a partner feed without the field), so no rule judges it;
    /// `Some("")` is a user agent that was absent or empty, which is `no_user_agent`.
    pub fn classify(&self, user_agent: Option<&str>, ip: Option<&str>) -> Reasons {
        let mut reasons = user_agent.map_or(Reasons::NONE, |ua| self.user_agents.reasons(ua));
        if ip
            .and_then(parse_ip)
            .is_some_and(|ip| self.datacenter.contains(ip))
        {
            reasons.insert(Reason::Datacenter);
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Browsers people click with: none may be flagged.
    pub const BROWSERS: &[&str] = &[
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "Mozilla/5.0 (Linux; Android 12; CUBOT NOTE 30 Build/SP1A) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 DuckDuckGo/5",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Snapchat/13.10.0.40 (like Safari/8617.2.4.10.8)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/110.0.0.0",
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    ];

    fn r(list: &[Reason]) -> Reasons {
        Reasons::of(list.iter().copied())
    }

    #[test]
    fn browsers_are_clean() {
        for ua in BROWSERS {
            assert_eq!(user_agent_reasons(ua), Reasons::NONE, "{ua}");
        }
    }

    #[test]
    fn bots_crawlers_and_scripts_are_known_bots() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Twitterbot/1.0",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "WhatsApp/2.23.20.0 A",
            "AdsBot-Google (+http://www.google.com/adsbot.html)",
            "Mediapartners-Google",
            "python-requests/2.31.0",
            "curl/8.5.0",
            "Wget/1.21.4",
            "Go-http-client/1.1",
            "okhttp/4.12.0",
            "Apache-HttpClient/4.5.14 (Java/17.0.9)",
            "axios/1.6.8",
            "Scrapy/2.11.1 (+https://scrapy.org)",
            "SomeNewCrawler",
            "MyMonitorBot",
            "Mozilla/5.0 (compatible; Cubot-Crawler; +http://example.com/)",
        ] {
            let got = user_agent_reasons(ua);
            assert!(got.contains(Reason::KnownBot), "{ua}: {got:?}");
            assert!(!got.contains(Reason::Headless), "{ua}: {got:?}");
        }
    }

    #[test]
    fn headless_browsers_are_headless_not_bots() {
        for ua in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
            "Mozilla/5.0 (X11; Linux x86_64; rv:60.0) Gecko/20100101 SlimerJS/1.0.0",
            "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36 Puppeteer",
            "Mozilla/5.0 (X11; Linux x86_64) Playwright/1.43",
            "Mozilla/5.0 (linux) AppleWebKit/537.36 (KHTML, like Gecko) jsdom/24.0.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 HeadlessEdg/124.0",
        ] {
            assert_eq!(user_agent_reasons(ua), r(&[Reason::Headless]), "{ua}");
        }
        // Both at once: both reasons; the click counts under known_bot, the first.
        let both = user_agent_reasons("HeadlessChrome/124 (compatible; Foobot/1.0)");
        assert_eq!(both, r(&[Reason::KnownBot, Reason::Headless]));
        assert_eq!(both.first(), Some(Reason::KnownBot));
    }

    #[test]
    fn an_absent_or_blank_user_agent_is_no_user_agent() {
        for ua in ["", " ", "\t \t"] {
            assert_eq!(user_agent_reasons(ua), r(&[Reason::NoUserAgent]), "{ua:?}");
        }
    }

    #[test]
    fn anchors_and_exceptions() {
        let rules = UserAgentRules::new(&["^curl\nbot$\nfetch\n!safefetcher\n"]).unwrap();
        let bot = |ua| rules.reasons(ua).contains(Reason::KnownBot);
        assert!(bot("curl/8"));
        assert!(!bot("Mozilla curl/8"));
        assert!(bot("Thing Mybot"));
        assert!(!bot("Mybot Thing"));
        assert!(bot("x fetch y"));
        assert!(!bot("x SafeFetcher y"), "the exception shields its marker");
        assert!(
            bot("SafeFetcher then fetch"),
            "a marker elsewhere still counts"
        );
        // Case-insensitive, both ways.
        assert!(bot("CURL/8"));
        assert!(bot("x FETCH"));
    }

    #[test]
    fn bad_list_lines_are_named() {
        assert_eq!(
            UserAgentRules::new(&["# comment\n\nok-entry\nab\n"])
                .err()
                .unwrap()
                .line,
            4
        );
        assert!(UserAgentRules::new(&["^x$"]).is_err());
        assert!(UserAgentRules::new(&["!ab"]).is_err());
        // Comments may be indented; blank lines of spaces are blank.
        assert!(UserAgentRules::new(&["   # note\n   \nfoobar"]).is_ok());
    }

    #[test]
    fn extra_lists_add_to_the_builtin_one() {
        let rules = UserAgentRules::new(&[BUILTIN_BOTS, "acme-fetcher\n!goodbot\n"]).unwrap();
        assert!(rules.reasons("Acme-Fetcher/2").contains(Reason::KnownBot));
        assert!(!rules.reasons("GoodBot/1.0").contains(Reason::KnownBot));
        assert!(rules.reasons("Googlebot/2.1").contains(Reason::KnownBot));
    }

    #[test]
    fn ranges_parse_merge_and_match() {
        let ranges = DatacenterRanges::parse(
            "# sample\n\n203.0.113.0/25  # half\n203.0.113.128/25\n198.51.100.7\n\
             2001:db8::/32\n2001:db8::/48\n10.1.2.3/8\n0.0.0.0/0 \n",
        )
        .unwrap();
        // The two halves are one range; the /48 lies inside the /32; 0/0 covers all v4.
        assert_eq!(ranges.v4, vec![(0, u32::MAX)]);
        assert_eq!(ranges.v6.len(), 1);

        let ranges = DatacenterRanges::parse(
            "203.0.113.0/25\n203.0.113.128/25\n198.51.100.7\n2001:db8::/32\n10.1.2.3/8\n",
        )
        .unwrap();
        assert_eq!(ranges.len(), 4);
        let has = |s: &str| ranges.contains(s.parse().unwrap());
        assert!(has("203.0.113.0") && has("203.0.113.200") && has("203.0.113.255"));
        assert!(!has("203.0.112.255") && !has("203.0.114.0"));
        assert!(has("198.51.100.7") && !has("198.51.100.8") && !has("198.51.100.6"));
        assert!(
            has("10.0.0.0") && has("10.255.255.255"),
            "host bits are ignored"
        );
        assert!(!has("11.0.0.0"));
        assert!(has("2001:db8::1") && has("2001:db8:ffff::1"));
        assert!(!has("2001:db9::1") && !has("::1"));
        assert!(has("::ffff:203.0.113.9"), "IPv4-mapped is judged as IPv4");
        assert!(!has("::ffff:127.0.0.1"));
    }

    #[test]
    fn bad_cidr_lines_are_named() {
        for (text, line) in [
            ("1.2.3.0/24\nnot-an-ip\n", 2),
            ("1.2.3.0/33", 1),
            ("\n\n::/129", 3),
            ("1.2.3.0/x", 1),
        ] {
            assert_eq!(
                DatacenterRanges::parse(text).unwrap_err().line,
                line,
                "{text}"
            );
        }
    }

    #[test]
    fn the_sample_file_parses_and_spares_loopback_and_private_ranges() {
        let ranges = DatacenterRanges::parse(SAMPLE_DATACENTER_CIDRS).unwrap();
        assert!(ranges.len() >= 10);
        for ip in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
        ] {
            assert!(!ranges.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["104.131.1.1", "2a01:4f8::1", "35.184.0.1"] {
            assert!(ranges.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_classifier_combines_both_and_skips_what_it_was_not_given() {
        let c = Classifier::new(
            UserAgentRules::new(&[BUILTIN_BOTS]).unwrap(),
            DatacenterRanges::parse("203.0.113.0/24\n2001:db8::/32").unwrap(),
        );
        let browser = BROWSERS[0];
        assert_eq!(
            c.classify(Some(browser), Some("198.51.100.1")),
            Reasons::NONE
        );
        assert_eq!(
            c.classify(Some(browser), Some("203.0.113.9")),
            r(&[Reason::Datacenter])
        );
        assert_eq!(
            c.classify(Some("curl/8"), Some("[2001:db8::5]:443")),
            r(&[Reason::KnownBot, Reason::Datacenter])
        );
        assert_eq!(
            c.classify(Some(""), Some("203.0.113.9:5000")),
            r(&[Reason::Datacenter, Reason::NoUserAgent])
        );
        // Not seen is not judged: no user agent rule, no address rule.
        assert_eq!(c.classify(None, None), Reasons::NONE);
        assert_eq!(c.classify(None, Some("garbage")), Reasons::NONE);
    }
}
