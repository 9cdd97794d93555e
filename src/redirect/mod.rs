//! `adclick-redirect`: the click endpoint. It verifies the signed click URL, answers 302 to
//! the advertiser at once, and hands the click to the [`Outbox`], which gets it to Kafka
//! without the user waiting for the broker and without losing it when the broker is down.
//! Partner feeds POST NDJSON batches to the same pipeline.
//!
//! The request logic ([`click`], [`partner`]) is plain functions over [`State`]; this module
//! only wires them to warp.

pub mod click;
pub mod metrics;
pub mod partner;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use warp::Filter;
use warp::http::{HeaderMap, Response, StatusCode, header};

use crate::config::Config;
use crate::event::enrich::Enricher;
use crate::event::invalid::Classifier;
use crate::kafka::outbox::{Outbox, OutboxMetrics};
use crate::token::Keyring;

pub use metrics::RedirectMetrics;

/// Everything a request needs, shared by all of them.
pub struct State {
    pub config: Config,
    pub keyring: Keyring,
    pub enricher: Enricher,
    /// Invalid-traffic rules applied to every click before its IP is hashed.
    pub classifier: Classifier,
    pub outbox: Outbox,
    pub metrics: RedirectMetrics,
    pub registry: Registry,
}

impl State {
    /// Checks the configuration and connects the outbox (Kafka producer and spool).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.check_redirect()?;
        limits(&config.redirect).check("redirect.")?;
        anyhow::ensure!(
            config.redirect.max_line_bytes >= 256,
            "redirect.max_line_bytes must be at least 256"
        );
        let keyring = Keyring::new(&config.signing.keys, config.signing.active_kid.as_deref())?;
        let enricher = Enricher::new(config.privacy.salt.as_bytes());
        let classifier = Classifier::from_config(&config.redirect)?;
        let mut registry = Registry::with_prefix("adclick_redirect");
        let metrics = RedirectMetrics::register(&mut registry);
        let outbox = Outbox::start(
            &config.kafka,
            &config.redirect,
            OutboxMetrics::register(&mut registry),
        )?;
        Ok(Self {
            config,
            keyring,
            enricher,
            classifier,
            outbox,
            metrics,
            registry,
        })
    }
}

/// A plain response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Bytes::from(body))
        .expect("static headers are valid")
}

/// The HTTP routes of the redirect service.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();

    // Paths before methods, so an unknown path is 404 rather than 405.
    let click = warp::path!("api" / "v1" / "click" / String)
        .and(warp::get())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(crate::http_server::remote())
        .and(with_state.clone())
        .map(
            |impression: String,
             query: String,
             headers: HeaderMap,
             remote: Option<SocketAddr>,
             state: Arc<State>| {
                let request = click::ClickRequest {
                    impression_id: &impression,
                    query: &query,
                    headers: &headers,
                    remote,
                };
                click::handle(&state, &request)
            },
        );

    // The body is handed over unread: the handler checks the key first, then streams it.
    let events = warp::path!("api" / "v1" / "events")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(|headers: HeaderMap, body, state: Arc<State>| async move {
            partner::handle(&state, &headers, body).await
        });

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()));

    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            // 503 while clicks are taken but do not reach Kafka (broker gone, or delivery
            // stuck), with the reasons, so the balancer and the operator both see it.
            let readiness = state.outbox.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&readiness).expect("readiness serializes");
            json_response(status, body)
        });

    let metrics =
        warp::path!("metrics")
            .and(warp::get())
            .and(with_state)
            .map(|state: Arc<State>| {
                let spool = &state.config.redirect.spool_dir;
                state.metrics.observe_disk("spool", spool);
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &state.registry)
                    .expect("writing to a String cannot fail");
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Bytes::from(text))
                    .expect("static headers are valid")
            });

    click
        .or(events)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            let (status, message) = if rejection.is_not_found() {
                (StatusCode::NOT_FOUND, "no such endpoint".to_string())
            } else if let Some(e) = rejection.find::<warp::reject::PayloadTooLarge>() {
                (StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
            } else {
                (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
            };
            let body = serde_json::json!({ "error": message });
            Ok::<_, Infallible>(json_response(status, body.to_string()))
        })
        .unify()
}

/// The redirect's connection limits (`redirect.max_connections`, timeouts, URI length).
pub fn limits(config: &crate::config::RedirectConfig) -> crate::http_server::Limits {
    crate::http_server::Limits {
        max_connections: config.max_connections,
        header_read_timeout: std::time::Duration::from_millis(config.header_read_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(config.idle_timeout_ms),
        max_uri_bytes: config.max_uri_bytes,
    }
}

/// Serves until `shutdown` resolves, then drains the outbox: everything in memory reaches
/// Kafka or the spool before this returns.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let grace = std::time::Duration::from_millis(state.config.redirect.shutdown_grace_ms);
    crate::http_server::serve(
        warp::service(routes(state.clone())),
        listener,
        limits(&state.config.redirect),
        shutdown,
    )
    .await;
    tokio::task::spawn_blocking(move || state.outbox.shutdown(grace))
        .await
        .expect("outbox shutdown does not panic");
}
