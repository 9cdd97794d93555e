//! The synthetic click both benchmarks generate, from one random draw `r`: 10 000 ads with a
//! skew (squaring), 1 000 campaigns, 100 advertisers, 500 publishers, 6 countries, 3 devices.

use adclick_dataflows::click::Labels;

pub fn labels(r: u64) -> Labels {
    let ad = ((r % 100) * (r % 100)) % 10_000;
    Labels {
        ad_id: format!("ad_{ad}"),
        campaign_id: format!("cmp_{}", ad % 1000),
        advertiser_id: format!("adv_{}", ad % 100),
        publisher_id: format!("pub_{}", r % 500),
        country: ["US", "GB", "DE", "IN", "BR", "JP"][(r % 6) as usize].into(),
        device: ["mobile", "desktop", "tablet"][(r % 3) as usize].into(),
    }
}

/// Who clicked: enough IPs and users that the flood rules hold real state, as in production.
pub fn traits(r: u64, event_time: u64) -> adclick_dataflows::click::Traits {
    adclick_dataflows::click::Traits {
        ip_hash: format!("{:032x}", (r >> 8) % 200_000),
        user_id_hash: format!("{:032x}", (r >> 28) % 400_000),
        impression_time: event_time - 1_500 - (r >> 50) % 20_000,
        reasons: Default::default(),
    }
}
