//! ISO 3166-1 country codes.
//!
//! Country is a billing dimension: advertisers are charged, and campaigns capped, per country,
//! so every click must carry exactly one spelling of it. We store the alpha-2 code, and accept
//! alpha-3 on the way in because seed logs (and some partners) write `USA` rather than `US`.
//! A click whose country we cannot tell is counted under `ZZ`, a code ISO 3166-1 reserves for
//! user assignment and will never give to a country, so "unknown" can never collide with a
//! real one.

/// The code clicks of unknown origin are counted under: ISO 3166-1's user-assigned `ZZ`.
pub const UNKNOWN: &str = "ZZ";

/// Every officially assigned ISO 3166-1 code as (alpha-2, alpha-3), sorted by alpha-2 so
/// [`normalize`] and [`is_alpha2`] can binary-search it. Exceptionally or user-assigned codes
/// (`XK` for Kosovo, `EU`, `UK`, ...) are deliberately absent: they are not countries to ISO,
/// and a billing report that splits `GB` from `UK` is worse than one that rejects `UK`.
const COUNTRIES: &[(&str, &str)] = &[
    ("AD", "AND"),
    ("AE", "ARE"),
    ("AF", "AFG"),
    ("AG", "ATG"),
    ("AI", "AIA"),
    ("AL", "ALB"),
    ("AM", "ARM"),
    ("AO", "AGO"),
    ("AQ", "ATA"),
    ("AR", "ARG"),
    ("AS", "ASM"),
    ("AT", "AUT"),
    ("AU", "AUS"),
    ("AW", "ABW"),
    ("AX", "ALA"),
    ("AZ", "AZE"),
    ("BA", "BIH"),
    ("BB", "BRB"),
    ("BD", "BGD"),
    ("BE", "BEL"),
    ("BF", "BFA"),
    ("BG", "BGR"),
    ("BH", "BHR"),
    ("BI", "BDI"),
    ("BJ", "BEN"),
    ("BL", "BLM"),
    ("BM", "BMU"),
    ("BN", "BRN"),
    ("BO", "BOL"),
    ("BQ", "BES"),
    ("BR", "BRA"),
    ("BS", "BHS"),
    ("BT", "BTN"),
    ("BV", "BVT"),
    ("BW", "BWA"),
    ("BY", "BLR"),
    ("BZ", "BLZ"),
    ("CA", "CAN"),
    ("CC", "CCK"),
    ("CD", "COD"),
    ("CF", "CAF"),
    ("CG", "COG"),
    ("CH", "CHE"),
    ("CI", "CIV"),
    ("CK", "COK"),
    ("CL", "CHL"),
    ("CM", "CMR"),
    ("CN", "CHN"),
    ("CO", "COL"),
    ("CR", "CRI"),
    ("CU", "CUB"),
    ("CV", "CPV"),
    ("CW", "CUW"),
    ("CX", "CXR"),
    ("CY", "CYP"),
    ("CZ", "CZE"),
    ("DE", "DEU"),
    ("DJ", "DJI"),
    ("DK", "DNK"),
    ("DM", "DMA"),
    ("DO", "DOM"),
    ("DZ", "DZA"),
    ("EC", "ECU"),
    ("EE", "EST"),
    ("EG", "EGY"),
    ("EH", "ESH"),
    ("ER", "ERI"),
    ("ES", "ESP"),
    ("ET", "ETH"),
    ("FI", "FIN"),
    ("FJ", "FJI"),
    ("FK", "FLK"),
    ("FM", "FSM"),
    ("FO", "FRO"),
    ("FR", "FRA"),
    ("GA", "GAB"),
    ("GB", "GBR"),
    ("GD", "GRD"),
    ("GE", "GEO"),
    ("GF", "GUF"),
    ("GG", "GGY"),
    ("GH", "GHA"),
    ("GI", "GIB"),
    ("GL", "GRL"),
    ("GM", "GMB"),
    ("GN", "GIN"),
    ("GP", "GLP"),
    ("GQ", "GNQ"),
    ("GR", "GRC"),
    ("GS", "SGS"),
    ("GT", "GTM"),
    ("GU", "GUM"),
    ("GW", "GNB"),
    ("GY", "GUY"),
    ("HK", "HKG"),
    ("HM", "HMD"),
    ("HN", "HND"),
    ("HR", "HRV"),
    ("HT", "HTI"),
    ("HU", "HUN"),
    ("ID", "IDN"),
    ("IE", "IRL"),
    ("IL", "ISR"),
    ("IM", "IMN"),
    ("IN", "IND"),
    ("IO", "IOT"),
    ("IQ", "IRQ"),
    ("IR", "IRN"),
    ("IS", "ISL"),
    ("IT", "ITA"),
    ("JE", "JEY"),
    ("JM", "JAM"),
    ("JO", "JOR"),
    ("JP", "JPN"),
    ("KE", "KEN"),
    ("KG", "KGZ"),
    ("KH", "KHM"),
    ("KI", "KIR"),
    ("KM", "COM"),
    ("KN", "KNA"),
    ("KP", "PRK"),
    ("KR", "KOR"),
    ("KW", "KWT"),
    ("KY", "CYM"),
    ("KZ", "KAZ"),
    ("LA", "LAO"),
    ("LB", "LBN"),
    ("LC", "LCA"),
    ("LI", "LIE"),
    ("LK", "LKA"),
    ("LR", "LBR"),
    ("LS", "LSO"),
    ("LT", "LTU"),
    ("LU", "LUX"),
    ("LV", "LVA"),
    ("LY", "LBY"),
    ("MA", "MAR"),
    ("MC", "MCO"),
    ("MD", "MDA"),
    ("ME", "MNE"),
    ("MF", "MAF"),
    ("MG", "MDG"),
    ("MH", "MHL"),
    ("MK", "MKD"),
    ("ML", "MLI"),
    ("MM", "MMR"),
    ("MN", "MNG"),
    ("MO", "MAC"),
    ("MP", "MNP"),
    ("MQ", "MTQ"),
    ("MR", "MRT"),
    ("MS", "MSR"),
    ("MT", "MLT"),
    ("MU", "MUS"),
    ("MV", "MDV"),
    ("MW", "MWI"),
    ("MX", "MEX"),
    ("MY", "MYS"),
    ("MZ", "MOZ"),
    ("NA", "NAM"),
    ("NC", "NCL"),
    ("NE", "NER"),
    ("NF", "NFK"),
    ("NG", "NGA"),
    ("NI", "NIC"),
    ("NL", "NLD"),
    ("NO", "NOR"),
    ("NP", "NPL"),
    ("NR", "NRU"),
    ("NU", "NIU"),
    ("NZ", "NZL"),
    ("OM", "OMN"),
    ("PA", "PAN"),
    ("PE", "PER"),
    ("PF", "PYF"),
    ("PG", "PNG"),
    ("PH", "PHL"),
    ("PK", "PAK"),
    ("PL", "POL"),
    ("PM", "SPM"),
    ("PN", "PCN"),
    ("PR", "PRI"),
    ("PS", "PSE"),
    ("PT", "PRT"),
    ("PW", "PLW"),
    ("PY", "PRY"),
    ("QA", "QAT"),
    ("RE", "REU"),
    ("RO", "ROU"),
    ("RS", "SRB"),
    ("RU", "RUS"),
    ("RW", "RWA"),
    ("SA", "SAU"),
    ("SB", "SLB"),
    ("SC", "SYC"),
    ("SD", "SDN"),
    ("SE", "SWE"),
    ("SG", "SGP"),
    ("SH", "SHN"),
    ("SI", "SVN"),
    ("SJ", "SJM"),
    ("SK", "SVK"),
    ("SL", "SLE"),
    ("SM", "SMR"),
    ("SN", "SEN"),
    ("SO", "SOM"),
    ("SR", "SUR"),
    ("SS", "SSD"),
    ("ST", "STP"),
    ("SV", "SLV"),
    ("SX", "SXM"),
    ("SY", "SYR"),
    ("SZ", "SWZ"),
    ("TC", "TCA"),
    ("TD", "TCD"),
    ("TF", "ATF"),
    ("TG", "TGO"),
    ("TH", "THA"),
    ("TJ", "TJK"),
    ("TK", "TKL"),
    ("TL", "TLS"),
    ("TM", "TKM"),
    ("TN", "TUN"),
    ("TO", "TON"),
    ("TR", "TUR"),
    ("TT", "TTO"),
    ("TV", "TUV"),
    ("TW", "TWN"),
    ("TZ", "TZA"),
    ("UA", "UKR"),
    ("UG", "UGA"),
    ("UM", "UMI"),
    ("US", "USA"),
    ("UY", "URY"),
    ("UZ", "UZB"),
    ("VA", "VAT"),
    ("VC", "VCT"),
    ("VE", "VEN"),
    ("VG", "VGB"),
    ("VI", "VIR"),
    ("VN", "VNM"),
    ("VU", "VUT"),
    ("WF", "WLF"),
    ("WS", "WSM"),
    ("YE", "YEM"),
    ("YT", "MYT"),
    ("ZA", "ZAF"),
    ("ZM", "ZMB"),
    ("ZW", "ZWE"),
];

/// The canonical alpha-2 spelling of `input`, which may be an alpha-2 or alpha-3 code in any
/// ASCII case with surrounding whitespace (`" usa "` gives `US`). `ZZ` is accepted and kept,
/// so an upstream that already says "unknown" round-trips. Anything else, including the
/// empty string, is `None`: the caller decides whether that is an error or [`UNKNOWN`].
///
/// Never allocates: it runs on every click in the redirect.
pub fn normalize(input: &str) -> Option<&'static str> {
    match *input.trim().as_bytes() {
        [a, b] => find_alpha2([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
        [a, b, c] => {
            let code = [
                a.to_ascii_uppercase(),
                b.to_ascii_uppercase(),
                c.to_ascii_uppercase(),
            ];
            // 249 three-byte compares; not worth a second index.
            COUNTRIES
                .iter()
                .find(|(_, alpha3)| alpha3.as_bytes() == code)
                .map(|&(alpha2, _)| alpha2)
        }
        _ => None,
    }
}

/// True for an assigned alpha-2 code or `ZZ`, spelled exactly (uppercase, no whitespace):
/// the form [`normalize`] produces and stored events must carry.
pub fn is_alpha2(code: &str) -> bool {
    match *code.as_bytes() {
        [a, b] => find_alpha2([a, b]).is_some(),
        _ => false,
    }
}

/// The table's own `&'static str` for an uppercase alpha-2 code, or `ZZ`.
fn find_alpha2(code: [u8; 2]) -> Option<&'static str> {
    if code == *b"ZZ" {
        return Some(UNKNOWN);
    }
    COUNTRIES
        .binary_search_by(|(alpha2, _)| alpha2.as_bytes().cmp(&code[..]))
        .ok()
        .map(|i| COUNTRIES[i].0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_sorted_complete_and_unique() {
        assert_eq!(COUNTRIES.len(), 249);
        assert!(
            COUNTRIES.windows(2).all(|w| w[0].0 < w[1].0),
            "alpha-2 codes must be strictly ascending"
        );
        let alpha3: HashSet<&str> = COUNTRIES.iter().map(|&(_, a3)| a3).collect();
        assert_eq!(alpha3.len(), COUNTRIES.len(), "duplicate alpha-3 code");
        for &(a2, a3) in COUNTRIES {
            assert!(
                a2.len() == 2 && a2.bytes().all(|b| b.is_ascii_uppercase()),
                "{a2}"
            );
            assert!(
                a3.len() == 3 && a3.bytes().all(|b| b.is_ascii_uppercase()),
                "{a3}"
            );
        }
        assert!(!COUNTRIES.iter().any(|&(a2, _)| a2 == UNKNOWN || a2 == "XK"));
    }

    #[test]
    fn normalizes_alpha2_and_alpha3() {
        assert_eq!(normalize("usa"), Some("US"));
        assert_eq!(normalize("USA"), Some("US"));
        assert_eq!(normalize("us"), Some("US"));
        assert_eq!(normalize(" gb "), Some("GB"));
        assert_eq!(normalize("DEU"), Some("DE"));
        assert_eq!(normalize("ad"), Some("AD"));
        assert_eq!(normalize("ZW"), Some("ZW"));
        assert_eq!(normalize("zwe"), Some("ZW"));
        assert_eq!(normalize("ZZ"), Some("ZZ"));
        assert_eq!(normalize("zz"), Some("ZZ"));
    }

    #[test]
    fn rejects_everything_else() {
        for input in [
            "XX", "", "   ", "XK", "UK", "U", "USAA", "XXX", "ZZZ", "é", "ÜS", "U S",
        ] {
            assert_eq!(normalize(input), None, "{input:?}");
        }
    }

    #[test]
    fn every_entry_normalizes_to_itself() {
        for &(a2, a3) in COUNTRIES {
            assert_eq!(normalize(a2), Some(a2));
            assert_eq!(normalize(a3), Some(a2));
            assert!(is_alpha2(a2));
        }
    }

    #[test]
    fn is_alpha2_is_exact() {
        assert!(is_alpha2("US"));
        assert!(is_alpha2("ZZ"));
        assert!(!is_alpha2("us"));
        assert!(!is_alpha2(" US"));
        assert!(!is_alpha2("USA"));
        assert!(!is_alpha2("XX"));
        assert!(!is_alpha2(""));
    }
}
