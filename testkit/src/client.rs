//! A real HTTP/1.1 client over real sockets, and a real server for an app under test.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One HTTP answer, read to the end.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How long any one request may take before the test fails instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends a request and reads the whole answer; panics (failing the test) on a transport
/// error or after [`REQUEST_TIMEOUT`].
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Like [`request`], but returns transport errors (refused connections, resets).
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[], b"").await
}

/// `GET url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, b"").await
}

/// The `Authorization` value `go tool pprof` and browsers send for `http://user:pass@host`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Serves `app` on 127.0.0.1, on a free port, in a background task; returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Starts the CPU profile at `profile_url` (its window in the URL) in the background and
/// returns once diag's index page (`index_url`) shows it running, with its answer still
/// to come.
///
/// A point fixed by the sampler's own order, for reading memory between back-to-back
/// profiles: diag starts a profile only after the previous one's stop has finished (a
/// stop runs after its answer goes out), so the process holds exactly one collector here.
pub async fn profile_running(profile_url: &str, index_url: &str) -> tokio::task::JoinHandle<Reply> {
    let url = profile_url.to_owned();
    let profile = tokio::spawn(async move { get(&url).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if get(index_url)
            .await
            .text()
            .contains("A CPU profile is running")
        {
            return profile;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{profile_url} never showed as running on {index_url} (120 s)");
}
