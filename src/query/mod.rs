//! The query server inside `adclick-aggregator`: warp routes over the cluster's live
//! arrangements, the dashboard, `/metrics`.
//!
//! HTTP handlers run on a tokio runtime of their own; they hand each query to worker 0 of
//! process 0 through a [`Bridge`] and await its answer. Worker 0 stamps the query with a read
//! time the data frontier has passed, feeds it to the query dataflow (the workers holding what
//! it reads answer from their shards, worker 0 merges: `adclick_dataflows::query`), looks up
//! the answer's texts and replies; the handler renders the JSON.

pub mod metrics;
pub mod params;
pub mod render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use adclick_dataflows::query::QueryKind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use warp::Filter as _;
use warp::Reply as _;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::health::Health;
use params::{Access, Plan, QueryError};
use render::{Resolved, render};

/// An API key: an advertiser's (sees its own campaigns and ads) or, without one, an admin's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    #[serde(default)]
    pub advertiser: Option<String>,
}

/// A query on its way to worker 0.
pub struct Ask {
    pub kind: QueryKind,
    pub reply: oneshot::Sender<Resolved>,
}

/// The channel from HTTP handlers to worker 0, which wakes it when a query arrives.
#[derive(Clone)]
pub struct Bridge {
    tx: mpsc::Sender<Ask>,
    worker: Arc<Mutex<Option<std::thread::Thread>>>,
}

impl Bridge {
    /// The bridge, and the receiving end for worker 0.
    pub fn new() -> (Self, mpsc::Receiver<Ask>) {
        let (tx, rx) = mpsc::channel();
        let b = Bridge {
            tx,
            worker: Arc::new(Mutex::new(None)),
        };
        (b, rx)
    }

    /// Called by worker 0's thread, so that queries can unpark it.
    pub fn register_worker(&self) {
        *self.worker.lock().unwrap() = Some(std::thread::current());
    }

    async fn ask(&self, kind: QueryKind) -> Option<Resolved> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask { kind, reply };
        self.tx.send(ask).ok()?;
        if let Some(t) = self.worker.lock().unwrap().as_ref() {
            t.unpark();
        }
        answer.await.ok()
    }
}

/// What the routes share.
pub struct Server {
    pub bridge: Bridge,
    pub health: Arc<Health>,
    pub keys: Vec<ApiKey>,
    pub minute_retention_ms: u64,
    pub top_n: usize,
    pub top_windows: Vec<u64>,
    /// Reach holds final minutes only: a reach range is complete this long after its end.
    pub allowed_lateness_ms: u64,
    /// Whether reach is kept (`aggregator.reach`): off, `unique_users` is null and reach
    /// queries are refused with [`params::REACH_OFF`].
    pub reach: bool,
    pub metrics: metrics::QueryMetrics,
}

/// A second, reach query beside an answer: how to plan it for the caller (`Ok(None)`: not
/// answerable for these parameters; an error refuses the whole request), and how to put its
/// answer (none when not planned) into the first's JSON.
struct WithReach {
    plan: Box<dyn FnOnce(&Access) -> PlannedReach + Send>,
    combine: Box<dyn FnOnce(serde_json::Value, Option<Resolved>) -> serde_json::Value + Send>,
}

type PlannedReach = Result<Option<QueryKind>, QueryError>;

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_reply(status, json!({ "error": message }))
}

/// A query not answered, as its status and JSON error.
fn refused(e: QueryError) -> Response {
    error(e.status(), &e.to_string())
}

impl Server {
    fn access(&self, auth: Option<&str>) -> Option<Access> {
        let key = auth?.strip_prefix("Bearer ")?.trim();
        // Compared in constant time: keys are secrets.
        let found = self
            .keys
            .iter()
            .find(|k| k.key.as_bytes().ct_eq(key.as_bytes()).into())?;
        Some(match &found.advertiser {
            Some(a) => Access::Advertiser(a.clone()),
            None => Access::Admin,
        })
    }

    fn plan(&self) -> Plan {
        Plan {
            frontier: self.health.frontier.load(Ordering::Relaxed),
            minute_retention_ms: self.minute_retention_ms,
            top_n: self.top_n,
            top_windows: self.top_windows.clone(),
        }
    }

    /// Authenticates, plans, asks the cluster, renders: one path for every query endpoint.
    async fn query(
        &self,
        endpoint: &'static str,
        auth: Option<String>,
        plan: impl FnOnce(&Access, &Plan) -> Result<(QueryKind, String), QueryError>,
        finish: impl FnOnce(serde_json::Value) -> serde_json::Value,
    ) -> Response {
        self.query_with(endpoint, auth, plan, None, finish).await
    }

    /// [`Server::query`], with a second, reach query whose answer joins the first's.
    async fn query_with(
        &self,
        endpoint: &'static str,
        auth: Option<String>,
        plan: impl FnOnce(&Access, &Plan) -> Result<(QueryKind, String), QueryError>,
        reach: Option<WithReach>,
        finish: impl FnOnce(serde_json::Value) -> serde_json::Value,
    ) -> Response {
        let started = Instant::now();
        let planned = |access: &Access| {
            let first = plan(access, &self.plan())?;
            let second = match reach {
                Some(r) => Some(((r.plan)(access)?, r.combine)),
                None => None,
            };
            Ok::<_, QueryError>((first, second))
        };
        let response = match self.access(auth.as_deref()) {
            None => error(StatusCode::UNAUTHORIZED, "missing or unknown API key"),
            Some(access) => match planned(&access) {
                Err(e) => refused(e),
                Ok(((kind, ad_text), reach)) => {
                    let admin = access == Access::Admin;
                    let answer = self
                        .bridge
                        .ask(kind)
                        .await
                        .map(|r| render(r, admin, &ad_text).map(finish));
                    let answer = match (answer, reach) {
                        (Some(Ok(v)), Some((Some(k), combine))) => {
                            self.bridge.ask(k).await.map(|r| Ok(combine(v, Some(r))))
                        }
                        (Some(Ok(v)), Some((None, combine))) => Some(Ok(combine(v, None))),
                        (answer, _) => answer,
                    };
                    match answer {
                        Some(Ok(v)) => json_reply(StatusCode::OK, v),
                        Some(Err(e)) => error(e.status(), &e.to_string()),
                        None => error(StatusCode::SERVICE_UNAVAILABLE, "the cluster is stopping"),
                    }
                }
            },
        };
        self.metrics
            .observe(endpoint, response.status().as_u16(), started.elapsed());
        response
    }

    fn health_json(&self) -> serde_json::Value {
        let mut v = self.health.to_json();
        // The dashboard asks for reach only when it is kept.
        v["reach"] = json!(self.reach);
        v
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const UPLOT_JS: &str = include_str!("assets/uplot.min.js");
const UPLOT_CSS: &str = include_str!("assets/uplot.min.css");
const OPENAPI: &str = include_str!("openapi.json");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut().insert(
        "content-type",
        content_type.parse().expect("a valid header"),
    );
    r
}

type Params = HashMap<String, String>;

/// All routes.
pub fn routes(
    server: Arc<Server>,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let s = server.clone();
        warp::any().map(move || s.clone())
    };
    let auth = warp::header::optional::<String>("authorization");
    // What every query endpoint takes: a GET's parameters, its key, the server.
    let queried = {
        let with = with.clone();
        move || {
            warp::get()
                .and(warp::query::<Params>())
                .and(auth)
                .and(with())
        }
    };
    let ad_count = warp::path!("ads" / String / "aggregated_count")
        .and(queried())
        .then(|ad: String, p: Params, auth, s: Arc<Server>| async move {
            let (lateness, on) = (s.allowed_lateness_ms, s.reach);
            let (ad_for_reach, p_for_reach) = (ad.clone(), p.clone());
            let reach = WithReach {
                // Reach off: `unique_users` is null, as for a range reach cannot answer.
                plan: Box::new(move |a: &Access| {
                    let ad = params::path_id("ad_id", &ad_for_reach)?;
                    Ok(on
                        .then(|| params::ad_reach(&ad, &p_for_reach, a, lateness))
                        .flatten())
                }),
                combine: Box::new(|mut v, r| {
                    v["unique_users"] = json!(r.as_ref().and_then(render::unique_users));
                    v["unique_users_complete"] = json!(r.as_ref().and_then(render::reach_complete));
                    v
                }),
            };
            s.query_with(
                "aggregated_count",
                auth,
                |a, plan| {
                    let ad = params::path_id("ad_id", &ad)?;
                    params::ad_count(&ad, &p, a, plan).map(|k| (k, ad))
                },
                Some(reach),
                std::convert::identity,
            )
            .await
        });
    let reach = warp::path!("api" / "v1" / "reports" / "reach")
        .and(queried())
        .then(|p: Params, auth, s: Arc<Server>| async move {
            let (lateness, on) = (s.allowed_lateness_ms, s.reach);
            s.query(
                "reach",
                auth,
                |a, _plan| {
                    if !on {
                        return Err(params::REACH_OFF);
                    }
                    params::reach(&p, a, lateness).map(|k| (k, String::new()))
                },
                std::convert::identity,
            )
            .await
        });
    let popular = warp::path!("ads" / "popular_ads").and(queried()).then(
        |p: Params, auth, s: Arc<Server>| async move {
            s.query(
                "popular_ads",
                auth,
                |a, plan| params::popular(&p, a, plan).map(|k| (k, String::new())),
                std::convert::identity,
            )
            .await
        },
    );
    let report = warp::path!("api" / "v1" / "reports" / "clicks")
        .and(queried())
        .then(|p: Params, auth, s: Arc<Server>| async move {
            let shape = match params::report_shape(&p) {
                Ok(shape) => shape,
                Err(e) => return refused(e),
            };
            let metrics = match params::report_metrics(&p) {
                Ok(m) => m,
                Err(e) => return refused(e),
            };
            let (lateness, on) = (s.allowed_lateness_ms, s.reach);
            let reach = metrics.unique_users.then(|| {
                let p = p.clone();
                let joined = params::grouped_names(&p);
                WithReach {
                    plan: Box::new(move |a: &Access| {
                        if !on {
                            return Err(params::REACH_OFF);
                        }
                        params::report_reach(&p, a, lateness).map(Some)
                    }),
                    combine: Box::new(move |v, r| {
                        let users = r.map(|r| render::render(r, true, "")).and_then(Result::ok);
                        render::join_unique_users(v, users, &joined)
                    }),
                }
            });
            s.query_with(
                "reports",
                auth,
                |a, plan| params::report(&p, a, plan).map(|k| (k, String::new())),
                reach,
                move |v| {
                    let v = render::shape_report(v, shape);
                    if metrics.clicks {
                        v
                    } else {
                        render::without_clicks(v)
                    }
                },
            )
            .await
        });
    let quality = warp::path!("api" / "v1" / "reports" / "traffic_quality")
        .and(queried())
        .then(|p: Params, auth, s: Arc<Server>| async move {
            s.query(
                "traffic_quality",
                auth,
                |a, plan| params::traffic_quality(&p, a, plan).map(|k| (k, String::new())),
                render::traffic_quality,
            )
            .await
        });
    let alerts = warp::path!("api" / "v1" / "alerts").and(queried()).map(
        |p: Params, auth: Option<String>, s: Arc<Server>| {
            let started = Instant::now();
            let response = match s.access(auth.as_deref()) {
                None => error(StatusCode::UNAUTHORIZED, "missing or unknown API key"),
                Some(Access::Advertiser(_)) => error(
                    StatusCode::FORBIDDEN,
                    "traffic alerts span advertisers (publishers): an admin key is needed",
                ),
                Some(Access::Admin) => match params::alerts(&p) {
                    Err(e) => refused(e),
                    Ok((from, to, least)) => {
                        let alerts = s.health.alerts.between(from, to, least);
                        json_reply(StatusCode::OK, json!({ "alerts": alerts }))
                    }
                },
            };
            s.metrics
                .observe("alerts", response.status().as_u16(), started.elapsed());
            response
        },
    );
    let health = warp::path!("api" / "v1" / "health")
        .and(warp::get())
        .and(auth)
        .and(with())
        .map(
            |auth: Option<String>, s: Arc<Server>| match s.access(auth.as_deref()) {
                None => error(StatusCode::UNAUTHORIZED, "missing or unknown API key"),
                Some(_) => json_reply(StatusCode::OK, s.health_json()),
            },
        );
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with())
        .map(|s: Arc<Server>| {
            let mut r = Response::new(s.metrics.render(&s.health).into());
            r.headers_mut().insert(
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8"
                    .parse()
                    .expect("a valid header"),
            );
            r
        });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, json!({"status": "ok"})));
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| asset(OPENAPI, "application/json"));
    let page = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let assets = warp::path!("assets" / String)
        .and(warp::get())
        .map(|name: String| match name.as_str() {
            "app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
            "style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
            "uplot.min.js" => asset(UPLOT_JS, "text/javascript; charset=utf-8"),
            "uplot.min.css" => asset(UPLOT_CSS, "text/css; charset=utf-8"),
            _ => refused(QueryError::NotFound),
        });
    ad_count
        .or(popular)
        .unify()
        .or(report)
        .unify()
        .or(reach)
        .unify()
        .or(quality)
        .unify()
        .or(alerts)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(healthz)
        .unify()
        .or(openapi)
        .unify()
        .or(page)
        .unify()
        .or(assets)
        .unify()
        .recover(rejected)
        .unify()
}

/// What warp rejects, answered in JSON like every other error: clients read one error shape,
/// and a proxy's HTML page is never mistaken for ours. Every route is a GET, so a known path
/// with another method is a `405`.
async fn rejected(r: warp::Rejection) -> Result<Response, warp::Rejection> {
    use warp::reject::{InvalidHeader, InvalidQuery, MethodNotAllowed};
    let reply = if r.is_not_found() {
        refused(QueryError::NotFound)
    } else if r.find::<MethodNotAllowed>().is_some() {
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET",
        );
        reply
            .headers_mut()
            .insert("allow", warp::http::HeaderValue::from_static("GET"));
        reply
    } else if r.find::<InvalidQuery>().is_some() {
        error(StatusCode::BAD_REQUEST, "malformed query string")
    } else if let Some(h) = r.find::<InvalidHeader>() {
        error(
            StatusCode::BAD_REQUEST,
            &format!("invalid header `{}`", h.name()),
        )
    } else {
        tracing::warn!("query server: unhandled rejection {r:?}");
        error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(reply)
}

/// Starts the server on its own thread; returns the address it listens on. It runs on the
/// shared [`crate::http_server`], with the `aggregator.query_*` connection limits, so slow or
/// idle clients cannot hold the dashboard's and the API's connections.
pub fn spawn(
    listen: &str,
    limits: crate::http_server::Limits,
    server: Arc<Server>,
) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("aggregator.query_listen {listen:?}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("query-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("binding {addr}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr().map_err(Into::into));
                crate::http_server::serve(
                    warp::service(routes(server)),
                    listener,
                    limits,
                    std::future::pending(),
                )
                .await;
            });
        })?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the query server did not start"))?
}
