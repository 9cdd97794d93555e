//! Which shard (file or Kafka partition) an impression lands in. The generator needs to know,
//! not only the outputs: a consumer's watermark is per partition, so whether a click is "too
//! late" depends on what its partition has seen before it (see `traffic`'s late guard).

use serde::{Deserialize, Serialize};

/// How impression ids map to shards. All clicks of one impression share a shard, as they
/// share a Kafka partition, so dedup never has to look across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hash", rename_all = "snake_case")]
pub enum Partitioner {
    /// `crc32(impression_id) % shards`: the NDJSON file output.
    Crc32 { shards: u32 },
    /// Kafka's default partitioner (murmur2 of the key, as Java clients and librdkafka's
    /// `murmur2_random` compute it): the Kafka output, and the redirect's producer.
    Murmur2 { shards: u32 },
}

impl Partitioner {
    pub fn shards(&self) -> u32 {
        match *self {
            Partitioner::Crc32 { shards } | Partitioner::Murmur2 { shards } => shards,
        }
    }

    pub fn shard(&self, key: &[u8]) -> u32 {
        match *self {
            Partitioner::Crc32 { shards } => crc32fast::hash(key) % shards,
            Partitioner::Murmur2 { shards } => (murmur2(key) & 0x7fff_ffff) % shards,
        }
    }
}

/// Kafka's murmur2 (seed 0x9747b28c), bit for bit as `org.apache.kafka.common.utils.Utils`
/// and librdkafka's `rd_murmur2` compute it.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("chunks of 4"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's `unittest_murmur2` vectors (src/rdmurmur2.c), which match the Java client.
    #[test]
    fn murmur2_matches_the_kafka_reference_vectors() {
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067cf64),
            ("giberish123456789", 0x8f552b0c),
            ("1234", 0x9fc97b14),
            ("234", 0xe7c009ca),
            ("34", 0x873930da),
            ("4", 0x5a4b5ca1),
            (unaligned, 0x78424f1c),
            (&unaligned[1..], 0x4a62b377),
            (&unaligned[2..], 0xe0e4e09e),
            (&unaligned[3..], 0x62b8b43f),
            ("", 0x106e08d9),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn shards_are_in_range_and_spread() {
        for p in [
            Partitioner::Crc32 { shards: 5 },
            Partitioner::Murmur2 { shards: 5 },
        ] {
            let mut seen = [0u32; 5];
            for i in 0..1000 {
                let s = p.shard(format!("imp_1_{i}").as_bytes());
                seen[s as usize] += 1;
            }
            assert!(seen.iter().all(|&n| n > 150), "{p:?}: {seen:?}");
            assert_eq!(p.shards(), 5);
        }
        assert_eq!(
            Partitioner::Crc32 { shards: 7 }.shard(b"imp_1_42"),
            crc32fast::hash(b"imp_1_42") % 7
        );
    }
}
