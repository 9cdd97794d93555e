//! Grows a kept checkpoint's dedup state to a given number of clicks, so that a restore at
//! 100 M clicks can be measured without loading 100 M clicks through Kafka first (over an
//! hour on the benchmark machine). Used by scripts/bench-restore-scale.sh.
//!
//! Reads the newest complete checkpoint in SRC (full or a chain), and writes it to DST as one
//! full checkpoint at the same frontier, with the same rows, offsets and output state, and
//! with winners added until the winners number CLICKS: fresh random impressions, event times
//! spread evenly over the dedup horizon before the frontier, the checkpoint's own dimension
//! combinations. The added impressions never come again, so the counts a restart serves are
//! the kept checkpoint's: only the state a restore must rebuild grows.
//!
//! Usage: cargo bench --bench inflate_checkpoint -- SRC DST CLICKS

use std::path::PathBuf;

use adclick::aggregator::checkpoint::chain::Part;
use adclick::aggregator::checkpoint::{PART_FORMAT, Store};
use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [src, dst, clicks] = args.as_slice() else {
        bail!("usage: inflate_checkpoint SRC DST CLICKS");
    };
    let (src, dst) = (PathBuf::from(src), PathBuf::from(dst));
    let clicks: usize = clicks.replace('_', "").parse().context("CLICKS")?;
    let from = Store::new(&src)?;
    let mut manifest = from
        .latest()?
        .with_context(|| format!("no complete checkpoint in {}", src.display()))?;
    let horizon = manifest
        .settings
        .as_ref()
        .context("the checkpoint records no settings")?
        .dedup_horizon_ms
        .max(1);
    let (parts, winners) = from.read_chain_lazily(&manifest)?;
    let to = Store::new(&dst)?;
    let workers = parts.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(manifest.frontier);
    let mut bytes = 0;
    let mut total = 0;
    for (w, (mut part, chain)) in parts.into_iter().zip(winners).enumerate() {
        let mut won = chain.decode()?;
        let share = clicks / workers + usize::from(w < clicks % workers);
        let add = share.saturating_sub(won.len());
        let dims = won.dims_len() as u32;
        anyhow::ensure!(dims > 0 || add == 0, "worker {w}'s part has no dimensions");
        for i in 0..add as u64 {
            let before = (i * horizon / add as u64).min(horizon - 1);
            let t = manifest.frontier.saturating_sub(1 + before);
            won.push(rng.random(), t, rng.random(), rng.random_range(0..dims));
        }
        total += won.len();
        part.winners = won;
        bytes += to.write_part(manifest.frontier, &mut Part::Full(part))?;
    }
    manifest.chain.clear();
    manifest.bytes = bytes;
    manifest.format = PART_FORMAT;
    manifest.checksummed = true;
    to.commit(&manifest, 1)?;
    println!(
        "{total} winners in {workers} parts, {bytes} bytes, at frontier {} in {}",
        manifest.frontier,
        dst.display()
    );
    Ok(())
}
