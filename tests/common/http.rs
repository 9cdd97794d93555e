//! The tests' one HTTP client (hyper's), for tokio tests and, on a runtime of its own per
//! request, for plain ones: status, headers and the body as text, whatever the framing
//! (chunked or not), so no test hand-writes HTTP.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a blocking request may take.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(30);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &HttpClient, url: &str) -> HttpResponse {
    request(client, "GET", url, &[], "").await
}

/// [`request`] from a test without a runtime, with `key` as a bearer key; panics after 30 s.
pub fn blocking_request(method: &str, url: &str, key: Option<&str>) -> HttpResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    runtime.block_on(async {
        let client = http_client();
        let asked = request(&client, method, url, &headers, "");
        tokio::time::timeout(BLOCKING_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| panic!("{method} {url:.80}: no answer in {BLOCKING_TIMEOUT:?}"))
    })
}

/// `GET url` from a test without a runtime, with `key` as a bearer key.
pub fn blocking_get(url: &str, key: Option<&str>) -> HttpResponse {
    blocking_request("GET", url, key)
}
