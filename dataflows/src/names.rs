//! The dictionary from dimension fingerprints back to their texts.
//!
//! Rows carry [`Sym`]s; people read texts. Each source announces a text at the timely time of
//! the first click it counts carrying it, and again whenever a click carrying it travels at an
//! earlier time than any announcement so far (a source reads its partitions in turns, so a
//! later read can be an earlier time). So once a consumer's frontier has passed a row's time,
//! every text the row needs has been announced. Announcements are
//! broadcast: every worker keeps the whole dictionary (one entry per distinct ad, campaign,
//! advertiser, publisher, country and device, not per click).

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::click::{Dims, Labels, Sym};

/// A shared text: copies are reference counts.
pub type Text = Arc<str>;

/// One announcement.
pub type Name = (Sym, Text);

/// Remembers what a source announced and the earliest time it did, so a text goes out again
/// only for a click at an earlier time.
#[derive(Default)]
pub struct Announcer {
    earliest: HashMap<Sym, u64>,
}

impl Announcer {
    /// Appends the texts of `labels` (fingerprints `dims`) a click at time `at` needs
    /// announced: those never announced, or announced only at later times.
    pub fn announce(&mut self, labels: &Labels, dims: &Dims, at: u64, out: &mut Vec<Name>) {
        let syms = [
            dims.ad_id,
            dims.campaign_id,
            dims.advertiser_id,
            dims.publisher_id,
            dims.country,
            dims.device,
        ];
        for (sym, text) in syms.into_iter().zip(labels.texts()) {
            let earliest = self.earliest.entry(sym).or_insert(u64::MAX);
            if at < *earliest {
                *earliest = at;
                out.push((sym, Text::from(text)));
            }
        }
    }
}

/// Fingerprint → text, with a count of fingerprints claimed by two different texts.
#[derive(Default, Debug)]
pub struct Dictionary {
    texts: HashMap<Sym, Text>,
    collisions: u64,
}

impl Dictionary {
    pub fn new() -> Self {
        Self {
            texts: HashMap::new(),
            collisions: 0,
        }
    }

    /// Records an announcement. A second, different text for a known fingerprint is a
    /// collision: counted (operators alert on it), and the first text is kept.
    pub fn insert(&mut self, (sym, text): Name) {
        match self.texts.get(&sym) {
            None => {
                self.texts.insert(sym, text);
            }
            Some(known) if *known != text => self.collisions += 1,
            Some(_) => {}
        }
    }

    pub fn get(&self, sym: Sym) -> Option<&Text> {
        self.texts.get(&sym)
    }

    /// The text of `sym`; a fingerprint never announced (a bug, not an input error) shows as
    /// `#` and its hex digits rather than failing a report.
    pub fn text(&self, sym: Sym) -> Text {
        self.texts
            .get(&sym)
            .cloned()
            .unwrap_or_else(|| Text::from(format!("#{:016x}", sym.0)))
    }

    /// Every text known, for a checkpoint to restore.
    pub fn names(&self) -> Vec<Name> {
        self.texts.iter().map(|(s, t)| (*s, t.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn collisions(&self) -> u64 {
        self.collisions
    }

    /// Dimension texts of a row's dims.
    pub fn labels(&self, d: &Dims) -> Labels {
        let t = |s| self.text(s).to_string();
        Labels {
            ad_id: t(d.ad_id),
            campaign_id: t(d.campaign_id),
            advertiser_id: t(d.advertiser_id),
            publisher_id: t(d.publisher_id),
            country: t(d.country),
            device: t(d.device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_each_text_once_unless_a_click_comes_earlier_and_resolves_it() {
        let labels = Labels {
            ad_id: "ad_1".into(),
            campaign_id: "cmp_1".into(),
            advertiser_id: "adv_1".into(),
            publisher_id: "pub_1".into(),
            country: "US".into(),
            device: "mobile".into(),
        };
        let dims = labels.dims();
        let (mut a, mut out) = (Announcer::default(), Vec::new());
        a.announce(&labels, &dims, 200, &mut out);
        a.announce(&labels, &dims, 300, &mut out);
        assert_eq!(out.len(), 6, "a later click needs no announcement");
        // A click read later but at an earlier time (another partition, behind): the texts
        // go out again at its time, so its rows never wait on a later announcement.
        a.announce(&labels, &dims, 100, &mut out);
        assert_eq!(out.len(), 12);
        let mut d = Dictionary::new();
        out.into_iter().for_each(|n| d.insert(n));
        assert_eq!(d.labels(&dims), labels);
        d.insert((dims.ad_id, "other".into()));
        assert_eq!(d.collisions(), 1);
        assert_eq!(&*d.text(dims.ad_id), "ad_1");
    }
}
