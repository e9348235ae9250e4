//! diag in front of a plain hyper 1.x service, with no axum in the application.
//!
//! ```sh
//! cargo run --example hyper -p diag
//! curl http://127.0.0.1:3000/hello
//! go tool pprof -top 'http://127.0.0.1:3000/debug/pprof/profile?seconds=5'
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

async fn hello(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let body = format!("hello from {}\n", req.uri().path());
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{}/ (diag under /debug/pprof/)",
        listener.local_addr()?
    );
    // diag answers under /debug/pprof; everything else reaches `hello`.
    let svc = tower::ServiceBuilder::new()
        .layer(diag::DiagLayer::new(
            diag::Config::default().with_default_env(),
        ))
        .service(tower::service_fn(hello));
    loop {
        let (stream, _) = listener.accept().await?;
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
