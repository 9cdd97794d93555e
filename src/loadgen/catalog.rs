//! The advertising world the load generator clicks on, derived from four counts alone so
//! that anyone holding a truth file can rebuild the same world: advertisers `adv_{n}`,
//! campaigns `cmp_{n}` (campaign c belongs to advertiser c % A), ads `ad_{n}` (ad a belongs to
//! campaign a % C) and publishers `pub_{n}`.

use serde::{Deserialize, Serialize};

/// How big the world is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSize {
    pub ads: u32,
    pub campaigns: u32,
    pub advertisers: u32,
    pub publishers: u32,
}

/// Every id spelled out once, so that generating a click copies strings instead of
/// formatting them.
#[derive(Debug, Clone)]
pub struct Catalog {
    size: CatalogSize,
    ads: Vec<String>,
    campaigns: Vec<String>,
    advertisers: Vec<String>,
    publishers: Vec<String>,
}

/// One ad and the campaign and advertiser it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdRef<'a> {
    pub ad_id: &'a str,
    pub campaign_id: &'a str,
    pub advertiser_id: &'a str,
}

impl Catalog {
    /// Panics on a zero count: [`LoadgenConfig::check`](super::LoadgenConfig::check) rejects
    /// those with the flag to fix before a catalog is ever built.
    pub fn new(size: CatalogSize) -> Self {
        assert!(
            size.ads > 0 && size.campaigns > 0 && size.advertisers > 0 && size.publishers > 0,
            "every catalog count must be at least 1: {size:?}"
        );
        let ids = |prefix: &str, n: u32| (0..n).map(|i| format!("{prefix}_{i}")).collect();
        Self {
            size,
            ads: ids("ad", size.ads),
            campaigns: ids("cmp", size.campaigns),
            advertisers: ids("adv", size.advertisers),
            publishers: ids("pub", size.publishers),
        }
    }

    pub fn size(&self) -> CatalogSize {
        self.size
    }

    /// Ad `a` (0-based, below `size().ads`) with its owners.
    pub fn ad(&self, a: u32) -> AdRef<'_> {
        let campaign = a % self.size.campaigns;
        let advertiser = campaign % self.size.advertisers;
        AdRef {
            ad_id: &self.ads[a as usize],
            campaign_id: &self.campaigns[campaign as usize],
            advertiser_id: &self.advertisers[advertiser as usize],
        }
    }

    /// Campaign `c` (0-based, below `size().campaigns`).
    pub fn campaign_id(&self, c: u32) -> &str {
        &self.campaigns[c as usize]
    }

    pub fn publisher_id(&self, p: u32) -> &str {
        &self.publishers[p as usize]
    }

    /// The landing page a click on ad `a` redirects to; on a reserved `.example` domain so a
    /// browser following it by mistake reaches no one.
    pub fn landing_url(&self, a: u32) -> String {
        let ad = self.ad(a);
        format!(
            "https://{}.example/landing?ad={}",
            ad.advertiser_id.replace('_', "-"),
            ad.ad_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size() -> CatalogSize {
        CatalogSize {
            ads: 25,
            campaigns: 7,
            advertisers: 3,
            publishers: 4,
        }
    }

    #[test]
    fn ownership_follows_the_modulo_rule() {
        let c = Catalog::new(size());
        assert_eq!(
            c.ad(0),
            AdRef {
                ad_id: "ad_0",
                campaign_id: "cmp_0",
                advertiser_id: "adv_0"
            }
        );
        // ad 23 → campaign 23 % 7 = 2 → advertiser 2 % 3 = 2
        assert_eq!(
            c.ad(23),
            AdRef {
                ad_id: "ad_23",
                campaign_id: "cmp_2",
                advertiser_id: "adv_2"
            }
        );
        // ad 12 → campaign 5 → advertiser 2
        assert_eq!(c.ad(12).campaign_id, "cmp_5");
        assert_eq!(c.ad(12).advertiser_id, "adv_2");
        assert_eq!(c.publisher_id(3), "pub_3");
    }

    #[test]
    fn ids_and_landing_pages_are_valid() {
        let c = Catalog::new(size());
        for a in 0..size().ads {
            let ad = c.ad(a);
            for id in [ad.ad_id, ad.campaign_id, ad.advertiser_id] {
                crate::event::check_id("id", id).unwrap();
            }
            crate::token::check_landing_url(&c.landing_url(a)).unwrap();
        }
        assert_eq!(c.landing_url(4), "https://adv-1.example/landing?ad=ad_4");
    }

    #[test]
    #[should_panic(expected = "at least 1")]
    fn empty_worlds_are_refused() {
        Catalog::new(CatalogSize {
            publishers: 0,
            ..size()
        });
    }
}
