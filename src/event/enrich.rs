//! Turning what an ingest path observed into a [`ClickEvent`]: click ids, keyed hashes of
//! personal data, country and device. Every path (redirect, partner feed, log files, the load
//! generator) goes through here, so the same input always yields the same dimensions.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ClickEvent, InvalidEvent, Problem, country, device, device_to_proto};

/// Keyed hashes are truncated to 128 bits: plenty to join on, useless to reverse.
pub const HASH_HEX_LEN: usize = 32;

/// Holds the secret salt; raw IPs and user ids never leave the ingest process.
#[derive(Clone)]
pub struct Enricher {
    salt: Vec<u8>,
}

/// What an ingest path knows about one click before enrichment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub impression_id: String,
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub event_time_ms: i64,
    /// As received: alpha-2, alpha-3, or absent.
    pub country: Option<String>,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    pub user_agent: Option<String>,
}

impl Enricher {
    pub fn new(salt: impl Into<Vec<u8>>) -> Self {
        Self { salt: salt.into() }
    }

    /// HMAC-SHA256(salt, domain || 0 || value), first 128 bits in hex. The domain keeps an IP
    /// and a user id with the same spelling from hashing alike.
    pub fn keyed_hash(&self, domain: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.salt).expect("HMAC takes any key");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(HASH_HEX_LEN);
        for b in &digest[..HASH_HEX_LEN / 2] {
            out.push(char::from_digit((b >> 4) as u32, 16).unwrap());
            out.push(char::from_digit((b & 15) as u32, 16).unwrap());
        }
        out
    }

    /// Builds and validates the event. A country that is present but not a code is an error
    /// (partners should fix it); an absent one is `ZZ`.
    pub fn enrich(&self, obs: Observed, source: &str) -> Result<ClickEvent, InvalidEvent> {
        let country = match obs.country.as_deref().map(str::trim) {
            None | Some("") => country::UNKNOWN,
            Some(c) => country::normalize(c).ok_or_else(|| {
                InvalidEvent::new(
                    "country",
                    Problem::BadValue(format!("{c:?} is not an ISO 3166-1 country code")),
                )
            })?,
        };
        let mut user_agent = obs.user_agent.unwrap_or_default();
        truncate_at_char_boundary(&mut user_agent, super::MAX_USER_AGENT_LEN);
        let hash = |domain, v: Option<String>| match v.as_deref().map(str::trim) {
            None | Some("") => String::new(),
            Some(v) => self.keyed_hash(domain, v),
        };
        let event = ClickEvent {
            click_id: uuid::Uuid::now_v7().to_string(),
            impression_id: obs.impression_id,
            ad_id: obs.ad_id,
            campaign_id: obs.campaign_id,
            advertiser_id: obs.advertiser_id,
            publisher_id: obs.publisher_id,
            event_time_ms: obs.event_time_ms,
            country: country.to_string(),
            device: device_to_proto(device::classify(&user_agent)),
            ip_hash: hash("ip", obs.ip),
            user_id_hash: hash("user", obs.user_id),
            user_agent,
            source: source.to_string(),
            // The ingest path classifies ([`super::invalid::Classifier`]) and knows the
            // impression time, if anyone does.
            invalid_reasons: Vec::new(),
            classified: false,
            impression_time_ms: 0,
        };
        event.validate()?;
        Ok(event)
    }
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Device;

    fn observed() -> Observed {
        Observed {
            impression_id: "imp-1".into(),
            ad_id: "ad_1".into(),
            campaign_id: "cmp_1".into(),
            advertiser_id: "adv_1".into(),
            publisher_id: "pub_1".into(),
            event_time_ms: 1_776_686_400_000,
            country: Some("usa".into()),
            ip: Some("203.0.113.9".into()),
            user_id: None,
            user_agent: Some("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)".into()),
        }
    }

    #[test]
    fn enriches_dimensions_and_hides_personal_data() {
        let e = Enricher::new("salt")
            .enrich(observed(), "partner:acme")
            .unwrap();
        assert_eq!(e.country, "US");
        assert_eq!(e.device(), Some(Device::Tablet));
        assert_eq!(e.ip_hash.len(), HASH_HEX_LEN);
        assert!(!e.to_json().contains("203.0.113.9"));
        assert_eq!(e.user_id_hash, "");
        assert_eq!(
            uuid::Uuid::parse_str(&e.click_id)
                .unwrap()
                .get_version_num(),
            7
        );
    }

    #[test]
    fn hashes_are_keyed_and_domain_separated() {
        let a = Enricher::new("one");
        let b = Enricher::new("two");
        assert_eq!(a.keyed_hash("ip", "x"), a.keyed_hash("ip", "x"));
        assert_ne!(a.keyed_hash("ip", "x"), b.keyed_hash("ip", "x"));
        assert_ne!(a.keyed_hash("ip", "x"), a.keyed_hash("user", "x"));
    }

    #[test]
    fn bad_country_is_rejected_missing_is_zz() {
        let en = Enricher::new("s");
        let mut o = observed();
        o.country = Some("Atlantis".into());
        assert_eq!(en.enrich(o, "x").unwrap_err().field, "country");
        let mut o = observed();
        o.country = None;
        assert_eq!(en.enrich(o, "x").unwrap().country, "ZZ");
    }

    #[test]
    fn long_user_agents_are_truncated_on_a_char_boundary() {
        let mut o = observed();
        o.user_agent = Some("é".repeat(1000));
        let e = Enricher::new("s").enrich(o, "x").unwrap();
        assert!(e.user_agent.len() <= crate::event::MAX_USER_AGENT_LEN);
    }
}
