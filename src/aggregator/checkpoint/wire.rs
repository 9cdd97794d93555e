//! How a part's dedup winners are encoded (part format 5). Winners are most of a link (the
//! impressions whose winner changed in an interval, nearly all of them recent, so nearly all
//! with traits), so their bytes are most of what a checkpoint writes and a restore reads:
//!
//! - each winner's traits sit beside its entry, not in a list of their own that repeats the
//!   impression and its event time (a trait whose impression has no entry of that event time,
//!   or a second one of an impression, follows the entries whole, so nothing is lost);
//! - random 64- and 128-bit ids (impressions, clicks, texts) are written in fixed width: a
//!   postcard varint of a random `u128` takes 19 bytes, of a random `u64` 10.
//!
//! The in-memory [`Winners`] is unchanged; only its encoding is this one.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;

use adclick_dataflows::click::{Dims, Sym};
use adclick_dataflows::dedup::{Judged, PassThrough};
use adclick_dataflows::invalid::Reasons;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::part::Winners;

/// Traits: click id, IP, user, impression time, reasons.
type JudgedWire = ([u8; 16], Option<[u8; 8]>, Option<[u8; 8]>, u64, u8);
/// An entry: impression, event time, click fingerprint, index into the dimensions, traits.
type EntryWire = ([u8; 16], u64, [u8; 8], u32, Option<JudgedWire>);
/// A trait without an entry beside it: impression, event time, traits.
type OrphanWire = ([u8; 16], u64, JudgedWire);

fn judged_to_wire(j: &Judged) -> JudgedWire {
    let sym = |s: Option<Sym>| s.map(|s| s.0.to_le_bytes());
    (
        j.click_id.to_le_bytes(),
        sym(j.ip),
        sym(j.user),
        j.impression_time,
        j.reasons.0,
    )
}

fn judged_from_wire(w: JudgedWire) -> Judged {
    let sym = |s: Option<[u8; 8]>| s.map(|b| Sym(u64::from_le_bytes(b)));
    Judged {
        click_id: u128::from_le_bytes(w.0),
        ip: sym(w.1),
        user: sym(w.2),
        impression_time: w.3,
        reasons: Reasons(w.4),
    }
}

const NONE: u32 = u32::MAX;

impl Serialize for Winners {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (beside, orphans) = layout(self);
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.dims)?;
        t.serialize_element(&Entries {
            winners: self,
            beside: &beside,
        })?;
        t.serialize_element(&orphans)?;
        t.end()
    }
}

/// Which trait goes beside each entry ([`beside`]), and the traits that follow the entries.
fn layout(w: &Winners) -> (Vec<u32>, Vec<OrphanWire>) {
    let beside = beside(w);
    let mut used = vec![false; w.judged.len()];
    for b in beside.iter().filter(|b| **b != NONE) {
        used[*b as usize] = true;
    }
    let orphans = w
        .judged
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|((imp, t, j), _)| (imp.to_le_bytes(), *t, judged_to_wire(j)))
        .collect();
    (beside, orphans)
}

/// Writes `w` to `out` exactly as postcard encodes its [`Serialize`], byte for byte, but each
/// entry in one write instead of a call per byte and field: a full part holds a hundred million
/// entries, and their encoding through serde into an `io::Write` was most of its writing time.
pub fn write_winners(w: &Winners, mut out: impl std::io::Write) -> std::io::Result<()> {
    let io = |e: postcard::Error| std::io::Error::other(e);
    let (beside, orphans) = layout(w);
    postcard::to_io(&w.dims, &mut out).map_err(io)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    varint(&mut buf, w.entries.len() as u64);
    for ((imp, t, click, d), b) in w.entries.iter().zip(&beside) {
        buf.extend_from_slice(&imp.to_le_bytes());
        varint(&mut buf, *t);
        buf.extend_from_slice(&click.to_le_bytes());
        varint(&mut buf, u64::from(*d));
        match w.judged.get(*b as usize).filter(|_| *b != NONE) {
            None => buf.push(0),
            Some((_, _, j)) => {
                buf.push(1);
                buf.extend_from_slice(&j.click_id.to_le_bytes());
                for sym in [j.ip, j.user] {
                    match sym {
                        None => buf.push(0),
                        Some(s) => {
                            buf.push(1);
                            buf.extend_from_slice(&s.0.to_le_bytes());
                        }
                    }
                }
                varint(&mut buf, j.impression_time);
                buf.push(j.reasons.0);
            }
        }
        if buf.len() > (1 << 16) - 128 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    postcard::to_io(&orphans, &mut out).map_err(io)?;
    Ok(())
}

/// postcard's unsigned varint (LEB128).
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Which trait goes beside each entry (an index into the traits, or [`NONE`]): one of its
/// impression with the entry's event time, each trait beside one entry at most; the others
/// follow the entries whole. Either way an impression's traits read back in their order.
fn beside(w: &Winners) -> Vec<u32> {
    // A link's traits follow its entries in their order (the dedup records both at once):
    // matched in one pass, without a table.
    let mut next = 0;
    let aligned: Vec<u32> = w
        .entries
        .iter()
        .map(|(imp, t, ..)| match w.judged.get(next) {
            Some((i, jt, _)) if i == imp && jt == t => {
                next += 1;
                (next - 1) as u32
            }
            _ => NONE,
        })
        .collect();
    if next == w.judged.len() {
        return aligned;
    }
    drop(aligned);
    let mut first: HashMap<u128, u32, BuildHasherDefault<PassThrough>> =
        HashMap::with_capacity_and_hasher(w.judged.len(), Default::default());
    for (i, (imp, ..)) in w.judged.iter().enumerate() {
        first.entry(*imp).or_insert(i as u32);
    }
    // Otherwise the first trait of each impression, by a table. Only recent winners have
    // traits: a full part's older entries (most of them) need no lookup.
    let oldest = w.judged.iter().map(|j| j.1).min().unwrap_or(u64::MAX);
    let mut used = vec![false; w.judged.len()];
    w.entries
        .iter()
        .map(
            |(imp, t, ..)| match first.get(imp).filter(|_| *t >= oldest) {
                Some(&i) if w.judged[i as usize].1 == *t && !used[i as usize] => {
                    used[i as usize] = true;
                    i
                }
                _ => NONE,
            },
        )
        .collect()
}

struct Entries<'a> {
    winners: &'a Winners,
    beside: &'a [u32],
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let judged = &self.winners.judged;
        s.collect_seq(self.winners.entries.iter().zip(self.beside).map(
            |((imp, t, click, d), b)| -> EntryWire {
                (
                    imp.to_le_bytes(),
                    *t,
                    click.to_le_bytes(),
                    *d,
                    (*b != NONE).then(|| judged_to_wire(&judged[*b as usize].2)),
                )
            },
        ))
    }
}

impl<'de> Deserialize<'de> for Winners {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(3, WinnersVisitor)
    }
}

struct WinnersVisitor;

impl<'de> Visitor<'de> for WinnersVisitor {
    type Value = Winners;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a part's winners: dimensions, entries, traits without an entry")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Winners, A::Error> {
        let dims: Vec<Dims> = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let mut out = Winners {
            dims,
            ..Winners::default()
        };
        seq.next_element_seed(Decode(&mut out))?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let orphans: Vec<OrphanWire> = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        out.judged.extend(
            orphans
                .into_iter()
                .map(|(imp, t, j)| (u128::from_le_bytes(imp), t, judged_from_wire(j))),
        );
        Ok(out)
    }
}

/// Decodes the entries straight into the winners' two lists (a full part holds millions).
struct Decode<'a>(&'a mut Winners);

impl<'de> DeserializeSeed<'de> for Decode<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Decode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("winner entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // The length is the part's own (checksummed); capped all the same.
        self.0
            .entries
            .reserve(seq.size_hint().unwrap_or(0).min(1 << 22));
        while let Some((imp, t, click, d, judged)) = seq.next_element::<EntryWire>()? {
            let imp = u128::from_le_bytes(imp);
            self.0.entries.push((imp, t, u64::from_le_bytes(click), d));
            if let Some(j) = judged {
                self.0.judged.push((imp, t, judged_from_wire(j)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::part::{LegacyWinners, WorkerPart};
    use super::*;

    /// Traits with ids as random as fingerprints are.
    fn judged(id: u128, user: Option<u64>) -> Judged {
        let mix = adclick_dataflows::sketch::user_hash;
        Judged {
            click_id: u128::from(mix(id as u64)) << 64 | u128::from(mix(!(id as u64))),
            ip: Some(Sym(mix(id as u64 ^ 0xff))),
            user: user.map(|u| Sym(mix(u))),
            impression_time: 1_796_000_000_000 + id as u64,
            reasons: Reasons(id as u8 % 4),
        }
    }

    /// Winners as a part holds them: random 128-bit impressions, most recent ones with traits,
    /// and the odd cases: a trait whose impression has no entry, one whose event time is not
    /// the entry's, and an impression with two traits (kept in their order).
    fn winners() -> Winners {
        let mut w = Winners {
            dims: vec![
                Dims::default(),
                Dims {
                    ad_id: Sym(7),
                    ..Dims::default()
                },
            ],
            ..Winners::default()
        };
        let mut x = 0x9e37_79b9_7f4a_7c15_u128;
        for i in 0..1_000u64 {
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d_0000_0000_0000_0001)
                .wrapping_add(1);
            let t = 1_796_000_000_000 + i * 37;
            let click = adclick_dataflows::sketch::user_hash(i ^ 0xc11c);
            w.entries.push((x, t, click, (i % 2) as u32));
            if i % 5 != 0 {
                w.judged
                    .push((x, t, judged(u128::from(i), (i % 3 != 0).then_some(i))));
            }
        }
        let (imp, t, ..) = w.entries[1];
        w.judged.push((imp, t, judged(5_000, None)));
        w.judged.push((42, 1_000, judged(5_001, Some(1))));
        let (imp, t, ..) = w.entries[2];
        w.judged.push((imp, t + 1, judged(5_002, None)));
        w
    }

    fn by_impression(mut w: Winners) -> Winners {
        // Only an impression's own traits keep an order (a restore lets the later win).
        w.judged.sort_by_key(|j| j.0);
        w
    }

    #[test]
    fn winners_read_back_as_written_with_every_trait() {
        let w = winners();
        let bytes = postcard::to_stdvec(&w).unwrap();
        let back: Winners = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.entries, w.entries);
        assert_eq!(by_impression(back.clone()), by_impression(w.clone()));
        let twice: Vec<_> = back
            .judged
            .iter()
            .filter(|j| j.0 == w.entries[1].0)
            .collect();
        assert_eq!(twice.len(), 2);
        assert_eq!(
            twice[1].2,
            judged(5_000, None),
            "the later trait stays later"
        );
        // Traits in their entries' order, as a link's are (matched without a table), an
        // impression's two traits included.
        let mut aligned = w.clone();
        let mut seen = std::collections::HashSet::new();
        aligned.judged.retain(|(imp, t, _)| {
            w.entries.iter().any(|(i, et, ..)| i == imp && et == t) && seen.insert(*imp)
        });
        let (imp, t, ..) = aligned.entries[3];
        aligned.entries.insert(4, (imp, t, 9, 0));
        let k = aligned.judged.iter().position(|j| j.0 == imp).unwrap();
        let without_ip = Judged {
            ip: None,
            ..judged(5_003, None)
        };
        aligned.judged.insert(k + 1, (imp, t, without_ip));
        aligned.judged.sort_by_key(|(imp, t, _)| {
            aligned
                .entries
                .iter()
                .position(|(i, et, ..)| i == imp && et == t)
        });
        let bytes = postcard::to_stdvec(&aligned).unwrap();
        let back: Winners = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.entries, aligned.entries);
        assert_eq!(by_impression(back), by_impression(aligned.clone()));
        // Written without serde, the bytes are postcard's.
        for w in [&w, &aligned, &Winners::default()] {
            let mut fast = Vec::new();
            write_winners(w, &mut fast).unwrap();
            assert_eq!(fast, postcard::to_stdvec(w).unwrap());
        }
        let empty = Winners::default();
        let bytes = postcard::to_stdvec(&empty).unwrap();
        assert_eq!(postcard::from_bytes::<Winners>(&bytes).unwrap(), empty);
        // A cut encoding is an error, not fewer winners.
        let bytes = postcard::to_stdvec(&w).unwrap();
        assert!(postcard::from_bytes::<Winners>(&bytes[..bytes.len() - 3]).is_err());
    }

    /// The encoding formats 3 and 4 wrote (the derived one of the three lists) still reads,
    /// and this one is at most three quarters of its size on winners with traits
    /// (0.70 here).
    #[test]
    fn the_old_encoding_reads_and_the_new_one_is_smaller() {
        let w = winners();
        let old = postcard::to_stdvec(&(&w.dims, &w.entries, &w.judged)).unwrap();
        let e = WorkerPart::empty(3, 4);
        let part = WorkerPart {
            winners: (&w.dims, &w.entries, &w.judged),
            worker: e.worker,
            peers: e.peers,
            partitions: vec![1, 5],
            source: e.source,
            rows: e.rows,
            writer: e.writer,
        };
        let old_part = postcard::to_stdvec(&part).unwrap();
        let read: WorkerPart<LegacyWinners> = postcard::from_bytes(&old_part).unwrap();
        let read: WorkerPart = read.into();
        assert_eq!(read.winners, w);
        assert_eq!((read.worker, read.partitions), (3, vec![1, 5]));
        let new = postcard::to_stdvec(&w).unwrap();
        assert!(
            4 * new.len() <= 3 * old.len(),
            "{} bytes against {}",
            new.len(),
            old.len()
        );
    }
}
