//! The click endpoint. `adclick-redirect` serves; `adclick-redirect sign` mints click URLs.

use std::io::Write;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use adclick::cli::{CommonArgs, init_logging, shutdown_signal};
use adclick::redirect::{self, State};
use adclick::token::{ClickClaims, Keyring};

#[derive(Parser)]
#[command(
    version,
    about = "adclick's click endpoint: verify, redirect, never lose the click"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on (overrides redirect.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of the disk spool (overrides redirect.spool_dir).
    #[arg(long)]
    spool_dir: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed click URL (for ad servers and tests).
    Sign(SignArgs),
}

#[derive(clap::Args)]
struct SignArgs {
    #[arg(long)]
    impression_id: String,
    #[arg(long)]
    ad_id: String,
    #[arg(long)]
    campaign_id: String,
    #[arg(long)]
    advertiser_id: String,
    #[arg(long)]
    publisher_id: String,
    /// The advertiser's landing page.
    #[arg(long)]
    url: String,
    /// Seconds until the link expires.
    #[arg(long, default_value_t = 86_400)]
    ttl: i64,
    /// When the impression was served (signed as `imp_time`; clicks sooner after it than a
    /// person can click are flagged `too_fast`): ms since the epoch or RFC 3339
    /// [default: now, the moment of signing].
    #[arg(long, value_name = "TIME", conflicts_with = "no_impression_time")]
    impression_time: Option<String>,
    /// Sign no impression time, as links minted before it existed.
    #[arg(long)]
    no_impression_time: bool,
    /// Base of the redirect service, e.g. http://127.0.0.1:8080 (default: from redirect.listen).
    #[arg(long)]
    base: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let mut flags = Vec::new();
    if let Some(l) = &cli.listen {
        flags.push(("redirect.listen", l.clone().into()));
    }
    if let Some(d) = &cli.spool_dir {
        flags.push(("redirect.spool_dir", d.clone().into()));
    }
    let mut config = cli.common.load(flags)?;
    if let Some(Command::Sign(args)) = cli.command {
        let keyring = Keyring::new(&config.signing.keys, config.signing.active_kid.as_deref())?;
        adclick::token::check_landing_url(&args.url).map_err(|e| anyhow::anyhow!("--url {e}"))?;
        let claims = ClickClaims {
            impression_id: args.impression_id,
            ad_id: args.ad_id,
            campaign_id: args.campaign_id,
            advertiser_id: args.advertiser_id,
            publisher_id: args.publisher_id,
            url: args.url,
            exp: adclick::timefmt::now_millis() / 1000 + args.ttl,
        };
        let served = match (&args.impression_time, args.no_impression_time) {
            (_, true) => None,
            (None, false) => Some(adclick::timefmt::now_millis()),
            (Some(t), false) => Some(
                adclick::timefmt::parse_millis(t)
                    .map_err(|e| anyhow::anyhow!("--impression-time {e}"))?,
            ),
        };
        let served = served
            .map(|ms| {
                adclick::event::check_event_time(ms)
                    .map(|()| ms as u64)
                    .map_err(|e| anyhow::anyhow!("--impression-time: {}", e.problem))
            })
            .transpose()?;
        let base = args
            .base
            .unwrap_or_else(|| format!("http://{}", config.redirect.listen));
        writeln!(
            std::io::stdout(),
            "{}",
            keyring.click_url_served(&base, &claims, served)
        )?;
        return Ok(());
    }
    let embedded = cli.common.maybe_embedded_kafka(&mut config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.redirect.listen).await?;
        let state = Arc::new(State::new(config)?);
        let shutdown = shutdown_signal();
        println!(
            "adclick-redirect listening on http://{}",
            listener.local_addr()?
        );
        redirect::serve(state, listener, shutdown).await;
        anyhow::Ok(())
    })?;
    drop(embedded);
    Ok(())
}
