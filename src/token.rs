//! Signed click URLs. The ad server mints, for each impression it renders, a URL whose query
//! names the ad, its campaign, advertiser and publisher, the landing page, an expiry and the
//! signing key, plus `sig`: base64url(HMAC-SHA256(key, canonical form)). The redirect only
//! counts and only forwards what such a signature covers, so a forged click produces nothing
//! and an altered landing page is never redirected to.
//!
//! Canonical form: `adclick-click-v1\n{impression_id}\n` followed by the signed parameters
//! ([`SIGNED_PARAMS`]), sorted by name, each `name=value` form-urlencoded, joined by `&`.
//! Values are compared after decoding, so two spellings of one URL sign alike.
//!
//! The signed set is fixed: exactly the parameters [`Keyring::sign_query`] emits. Anything
//! else in the query (ad platforms and mail tools append `utm_*`, `gclid`, `fbclid`, ...) is
//! outside the signature: it neither breaks verification nor is trusted; [`Keyring::verify_click`]
//! hands it back separately so the redirect can decide what to forward. A signed name given
//! twice is still refused, so a second `url=` (however it is percent-encoded) cannot override
//! the signed one.
//!
//! Several keys may be active at once (rotation): `kid` picks one, and retiring a key is
//! removing it from the configuration.
//!
//! A link may also sign when its impression was served, `imp_time` (ms since the epoch,
//! [`OPTIONAL_SIGNED_PARAMS`]): the dataflow flags clicks that come sooner after it than a
//! person can click. The canonical form covers the signed parameters a link carries, so links
//! minted without it (before it existed) verify unchanged and report no impression time, while
//! adding, removing or altering it breaks the signature. A redirect older than this reads
//! `imp_time` as unsigned and refuses such links: upgrade the redirects before the ad servers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const DOMAIN: &str = "adclick-click-v1";
/// The parameters the signature covers: what `sign_query` emits besides `sig`. Links minted
/// before tracking parameters were tolerated carry exactly these, so they verify unchanged.
pub const SIGNED_PARAMS: [&str; 7] = [
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "publisher_id",
    "url",
    "exp",
    "kid",
];
/// Signed parameters a link may leave out; [`Keyring::sign_query_served`] emits them when
/// given. `imp_time`: when the impression was served, ms since the epoch.
pub const OPTIONAL_SIGNED_PARAMS: [&str; 1] = ["imp_time"];

fn is_signed(name: &str) -> bool {
    SIGNED_PARAMS.contains(&name) || OPTIONAL_SIGNED_PARAMS.contains(&name)
}

/// Unsigned parameters kept per request at most; a click URL with more is refused, so a
/// hostile query cannot make the redirect collect an unbounded list.
pub const MAX_UNSIGNED_PARAMS: usize = 64;
/// Secrets shorter than this are configuration mistakes, not keys.
pub const MIN_SECRET_LEN: usize = 16;

/// One signing key as it appears in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub kid: String,
    pub secret: String,
}

/// The facts a valid signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickClaims {
    pub impression_id: String,
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub url: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// Everything a verified click URL says: the claims, the impression time if the link signs
/// one, and the parameters outside the signature (untrusted, in request order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLink {
    pub claims: ClickClaims,
    /// When the impression was served, ms since the epoch; `None` for links without it.
    pub impression_time_ms: Option<u64>,
    pub unsigned: Vec<(String, String)>,
}

/// Why a click URL was refused. All of them answer 403; the label feeds the metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing parameter `{0}`")]
    Missing(&'static str),
    #[error("parameter `{0}` given more than once")]
    Repeated(String),
    #[error("more than {MAX_UNSIGNED_PARAMS} parameters outside the signed set")]
    TooManyUnsigned,
    #[error("parameter `{param}`: {reason}")]
    Malformed { param: &'static str, reason: String },
    #[error("unknown signing key `{0}`")]
    UnknownKey(String),
    #[error("signature does not match")]
    BadSignature,
    #[error("link expired")]
    Expired,
}

impl TokenError {
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Missing(_)
            | TokenError::Repeated(_)
            | TokenError::TooManyUnsigned
            | TokenError::Malformed { .. } => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("no signing keys configured")]
    Empty,
    #[error("signing key `{0}` appears twice")]
    Duplicate(String),
    #[error("signing key `{0}` is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort(String),
    #[error("active signing key `{0}` is not among the configured keys")]
    NoActive(String),
    #[error("signing key id `{0}` may only contain letters, digits, _ and -")]
    BadKid(String),
}

/// The active keys; `active` is the one `sign` uses.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Hmac<Sha256>)>,
    active: usize,
}

impl Keyring {
    pub fn new(keys: &[SigningKey], active_kid: Option<&str>) -> Result<Self, KeyringError> {
        let mut out: Vec<(String, Hmac<Sha256>)> = Vec::with_capacity(keys.len());
        for k in keys {
            if k.kid.is_empty()
                || !k
                    .kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(KeyringError::BadKid(k.kid.clone()));
            }
            if out.iter().any(|(kid, _)| *kid == k.kid) {
                return Err(KeyringError::Duplicate(k.kid.clone()));
            }
            if k.secret.len() < MIN_SECRET_LEN {
                return Err(KeyringError::TooShort(k.kid.clone()));
            }
            let mac = Hmac::<Sha256>::new_from_slice(k.secret.as_bytes()).expect("any key");
            out.push((k.kid.clone(), mac));
        }
        if out.is_empty() {
            return Err(KeyringError::Empty);
        }
        let active = match active_kid {
            None => out.len() - 1,
            Some(a) => out
                .iter()
                .position(|(kid, _)| kid == a)
                .ok_or_else(|| KeyringError::NoActive(a.to_string()))?,
        };
        Ok(Self { keys: out, active })
    }

    pub fn active_kid(&self) -> &str {
        &self.keys[self.active].0
    }

    /// The query string (without `?`) of a click URL for these claims, signed with the active
    /// key; no impression time (see [`Keyring::sign_query_served`]).
    pub fn sign_query(&self, claims: &ClickClaims) -> String {
        self.sign_query_served(claims, None)
    }

    /// [`Keyring::sign_query`], signing also when the impression was served (`imp_time`, ms
    /// since the epoch) if given.
    pub fn sign_query_served(
        &self,
        claims: &ClickClaims,
        impression_time_ms: Option<u64>,
    ) -> String {
        let (kid, mac) = &self.keys[self.active];
        let exp = claims.exp.to_string();
        let imp_time = impression_time_ms.map(|t| t.to_string());
        let mut params: Vec<(&str, &str)> = vec![
            ("ad_id", &claims.ad_id),
            ("campaign_id", &claims.campaign_id),
            ("advertiser_id", &claims.advertiser_id),
            ("publisher_id", &claims.publisher_id),
            ("url", &claims.url),
            ("exp", &exp),
            ("kid", kid),
        ];
        if let Some(t) = &imp_time {
            params.push(("imp_time", t));
        }
        let sig = URL_SAFE_NO_PAD.encode(tag(mac, &claims.impression_id, &params));
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(params);
        q.append_pair("sig", &sig);
        q.finish()
    }

    /// A complete click URL: `{base}/api/v1/click/{impression_id}?{signed query}`.
    pub fn click_url(&self, base: &str, claims: &ClickClaims) -> String {
        self.click_url_served(base, claims, None)
    }

    /// [`Keyring::click_url`] with the impression time signed, if given.
    pub fn click_url_served(
        &self,
        base: &str,
        claims: &ClickClaims,
        impression_time_ms: Option<u64>,
    ) -> String {
        format!(
            "{}/api/v1/click/{}?{}",
            base.trim_end_matches('/'),
            claims.impression_id,
            self.sign_query_served(claims, impression_time_ms)
        )
    }

    /// Checks a click request; see [`Keyring::verify_click`]. Parameters outside the signed
    /// set are ignored.
    pub fn verify(
        &self,
        impression_id: &str,
        raw_query: &str,
        now_secs: i64,
    ) -> Result<ClickClaims, TokenError> {
        self.verify_click(impression_id, raw_query, now_secs)
            .map(|(claims, _)| claims)
    }

    /// Checks a click request. The signature is checked before anything it covers is trusted,
    /// and in constant time; expiry is checked after, so an expired forgery is still a forgery.
    ///
    /// Returns the claims and, in request order and decoded, the parameters outside the signed
    /// set (names and values as the client sent them: untrusted).
    pub fn verify_click(
        &self,
        impression_id: &str,
        raw_query: &str,
        now_secs: i64,
    ) -> Result<(ClickClaims, Vec<(String, String)>), TokenError> {
        self.verify_link(impression_id, raw_query, now_secs)
            .map(|v| (v.claims, v.unsigned))
    }

    /// Checks a click request, as [`Keyring::verify_click`], and returns all the link says,
    /// the impression time included.
    pub fn verify_link(
        &self,
        impression_id: &str,
        raw_query: &str,
        now_secs: i64,
    ) -> Result<VerifiedLink, TokenError> {
        let mut params: Vec<(String, String)> = Vec::with_capacity(8);
        let mut unsigned: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
            // Names are compared after percent-decoding: `%75rl` is `url`, and is a repeat.
            if k != "sig" && !is_signed(&k) {
                if unsigned.len() == MAX_UNSIGNED_PARAMS {
                    return Err(TokenError::TooManyUnsigned);
                }
                unsigned.push((k.into_owned(), v.into_owned()));
                continue;
            }
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(TokenError::Repeated(k.into_owned()));
            }
            params.push((k.into_owned(), v.into_owned()));
        }
        let get = |name: &'static str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .ok_or(TokenError::Missing(name))
        };
        let sig = get("sig")?;
        let kid = get("kid")?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed {
                param: "sig",
                reason: "not base64url without padding".into(),
            })?;
        let mac = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, m)| m)
            .ok_or_else(|| TokenError::UnknownKey(truncated(kid)))?;
        let signed: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| k != "sig")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut mac = mac.clone();
        mac.update(canonical(impression_id, &signed).as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;

        let claims = ClickClaims {
            impression_id: impression_id.to_string(),
            ad_id: get("ad_id")?.to_string(),
            campaign_id: get("campaign_id")?.to_string(),
            advertiser_id: get("advertiser_id")?.to_string(),
            publisher_id: get("publisher_id")?.to_string(),
            url: get("url")?.to_string(),
            exp: get("exp")?.parse().map_err(|_| TokenError::Malformed {
                param: "exp",
                reason: "not Unix seconds".into(),
            })?,
        };
        check_landing_url(&claims.url).map_err(|reason| TokenError::Malformed {
            param: "url",
            reason,
        })?;
        let impression_time_ms = get("imp_time").ok().map(impression_time).transpose()?;
        if now_secs > claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(VerifiedLink {
            claims,
            impression_time_ms,
            unsigned,
        })
    }
}

/// A signed `imp_time`: ms since the epoch, in the years event times may have.
fn impression_time(text: &str) -> Result<u64, TokenError> {
    let range = crate::event::MIN_EVENT_TIME_MS as u64..crate::event::MAX_EVENT_TIME_MS as u64;
    match text.parse::<u64>() {
        Ok(ms) if range.contains(&ms) => Ok(ms),
        _ => Err(TokenError::Malformed {
            param: "imp_time",
            reason: "not milliseconds since the epoch in the years 2000 to 2099".into(),
        }),
    }
}

fn tag(mac: &Hmac<Sha256>, impression_id: &str, params: &[(&str, &str)]) -> Vec<u8> {
    let mut mac = mac.clone();
    mac.update(canonical(impression_id, params).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn canonical(impression_id: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.extend_pairs(sorted);
    format!("{DOMAIN}\n{impression_id}\n{}", body.finish())
}

/// The landing page must be an absolute http(s) URL that is also a valid `Location` header.
pub fn check_landing_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host".into());
    }
    if url.len() > 2048 {
        return Err("longer than 2048 bytes".into());
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f || !b.is_ascii()) {
        return Err("contains spaces, control or non-ASCII characters".into());
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_keys() -> Vec<SigningKey> {
        vec![
            SigningKey {
                kid: "k1".into(),
                secret: "first-secret-0123456789".into(),
            },
            SigningKey {
                kid: "k2".into(),
                secret: "second-secret-0123456789".into(),
            },
        ]
    }

    fn ring() -> Keyring {
        Keyring::new(&test_keys(), Some("k2")).unwrap()
    }

    fn claims() -> ClickClaims {
        ClickClaims {
            impression_id: "imp-42".into(),
            ad_id: "ad_9".into(),
            campaign_id: "cmp_3".into(),
            advertiser_id: "adv_1".into(),
            publisher_id: "pub_7".into(),
            url: "https://shop.example/landing?utm=a&b=c d".replace(' ', "%20"),
            exp: 2_000_000_000,
        }
    }

    #[test]
    fn signed_query_verifies() {
        let r = ring();
        let q = r.sign_query(&claims());
        assert!(q.contains("kid=k2"));
        assert_eq!(r.verify("imp-42", &q, 1_900_000_000).unwrap(), claims());
    }

    #[test]
    fn rotation_old_keys_still_verify_removed_keys_do_not() {
        let old = Keyring::new(&test_keys()[..1], None).unwrap();
        let q = old.sign_query(&claims());
        assert!(ring().verify("imp-42", &q, 0).is_ok());
        let only_new = Keyring::new(&test_keys()[1..], None).unwrap();
        assert_eq!(
            only_new.verify("imp-42", &q, 0),
            Err(TokenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let r = ring();
        let q = r.sign_query(&claims());
        assert_eq!(r.verify("imp-43", &q, 0), Err(TokenError::BadSignature));
        for (from, to) in [
            ("ad_id=ad_9", "ad_id=ad_8"),
            ("shop.example", "evil.example"),
            ("exp=2000000000", "exp=2000000001"),
            ("publisher_id=pub_7", "publisher_id=pub_6"),
        ] {
            let tampered = q.replace(from, to);
            assert_ne!(tampered, q);
            assert_eq!(
                r.verify("imp-42", &tampered, 0),
                Err(TokenError::BadSignature)
            );
        }
        let twice = format!("{q}&ad_id=ad_9");
        assert!(matches!(
            r.verify("imp-42", &twice, 0),
            Err(TokenError::Repeated(_))
        ));
    }

    #[test]
    fn unsigned_parameters_do_not_break_the_signature_and_come_back_separately() {
        let r = ring();
        let q = r.sign_query(&claims());
        let tracked = format!("utm_source=news&{q}&gclid=G%26x&extra=1&utm_source=again");
        let (got, unsigned) = r.verify_click("imp-42", &tracked, 0).unwrap();
        assert_eq!(got, claims());
        assert_eq!(
            unsigned,
            [
                ("utm_source", "news"),
                ("gclid", "G&x"),
                ("extra", "1"),
                ("utm_source", "again")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // A second landing page, however spelled, is a repeat of a signed name: refused.
        for smuggled in [
            "url=https%3A%2F%2Fevil.example%2F",
            "%75rl=https%3A%2F%2Fevil.example%2F",
            "u%72l=https://evil.example/",
            "sig=AAAA",
            "kid=k1",
        ] {
            for query in [format!("{q}&{smuggled}"), format!("{smuggled}&{q}")] {
                assert!(
                    matches!(
                        r.verify_click("imp-42", &query, 0),
                        Err(TokenError::Repeated(_))
                    ),
                    "{query}"
                );
            }
        }
        let many: String = (0..=MAX_UNSIGNED_PARAMS)
            .map(|i| format!("&p{i}=1"))
            .collect();
        assert_eq!(
            r.verify_click("imp-42", &format!("{q}{many}"), 0),
            Err(TokenError::TooManyUnsigned)
        );
    }

    #[test]
    fn expiry_and_missing_parts() {
        let r = ring();
        let q = r.sign_query(&claims());
        assert_eq!(
            r.verify("imp-42", &q, 2_000_000_001),
            Err(TokenError::Expired)
        );
        assert_eq!(r.verify("imp-42", "", 0), Err(TokenError::Missing("sig")));
        let no_sig: String = q.split("&sig=").next().unwrap().into();
        assert_eq!(
            r.verify("imp-42", &no_sig, 0),
            Err(TokenError::Missing("sig"))
        );
    }

    #[test]
    fn the_impression_time_is_signed_and_optional() {
        let r = ring();
        let served = 1_776_686_400_123;
        let q = r.sign_query_served(&claims(), Some(served));
        assert!(q.contains("imp_time=1776686400123"), "{q}");
        let v = r.verify_link("imp-42", &q, 0).unwrap();
        assert_eq!(v.claims, claims());
        assert_eq!(v.impression_time_ms, Some(served));
        assert!(v.unsigned.is_empty());
        // verify and verify_click still answer the claims alone.
        assert_eq!(r.verify("imp-42", &q, 0).unwrap(), claims());

        // A link minted without it (every link before it existed) verifies, without a time.
        let old = r.sign_query(&claims());
        assert!(!old.contains("imp_time"));
        let v = r.verify_link("imp-42", &old, 0).unwrap();
        assert_eq!((v.claims, v.impression_time_ms), (claims(), None));

        // Altered, added to an old link, removed from a new one, given twice: refused.
        let tampered = q.replace("imp_time=1776686400123", "imp_time=1776686399123");
        assert_eq!(
            r.verify_link("imp-42", &tampered, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            r.verify_link("imp-42", &format!("{old}&imp_time={served}"), 0),
            Err(TokenError::BadSignature)
        );
        let removed = q.replace("&imp_time=1776686400123", "");
        assert_ne!(removed, q);
        assert_eq!(
            r.verify_link("imp-42", &removed, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            r.verify_link("imp-42", &format!("{q}&imp_time={served}"), 0),
            Err(TokenError::Repeated("imp_time".into()))
        );
        // A signed value that is no time is malformed, not trusted.
        for bad in [0, 1_000, 5_000_000_000_000] {
            let q = r.sign_query_served(&claims(), Some(bad));
            assert!(
                matches!(
                    r.verify_link("imp-42", &q, 0),
                    Err(TokenError::Malformed {
                        param: "imp_time",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn landing_urls_must_be_absolute_http() {
        assert!(check_landing_url("https://a.example/x?y=1").is_ok());
        assert!(check_landing_url("http://127.0.0.1:8080/").is_ok());
        for bad in [
            "javascript:alert(1)",
            "//evil",
            "https://",
            "https://a b",
            "ftp://x",
        ] {
            assert!(check_landing_url(bad).is_err(), "{bad}");
        }
        let mut c = claims();
        c.url = "javascript:alert(1)".into();
        let r = ring();
        let q = r.sign_query(&c);
        assert!(matches!(
            r.verify("imp-42", &q, 0),
            Err(TokenError::Malformed { param: "url", .. })
        ));
    }

    #[test]
    fn keyring_rejects_bad_configuration() {
        let k = |kid: &str, secret: &str| SigningKey {
            kid: kid.into(),
            secret: secret.into(),
        };
        assert!(matches!(Keyring::new(&[], None), Err(KeyringError::Empty)));
        assert!(matches!(
            Keyring::new(&[k("a", "short")], None),
            Err(KeyringError::TooShort(_))
        ));
        let long = "0123456789abcdef";
        assert!(matches!(
            Keyring::new(&[k("a", long), k("a", long)], None),
            Err(KeyringError::Duplicate(_))
        ));
        assert!(matches!(
            Keyring::new(&[k("a", long)], Some("b")),
            Err(KeyringError::NoActive(_))
        ));
        assert!(matches!(
            Keyring::new(&[k("a b", long)], None),
            Err(KeyringError::BadKid(_))
        ));
    }
}
