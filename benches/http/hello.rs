//! A bare axum server for the HTTP benchmark (`benches/http/run.sh`): one handler that
//! answers `POST /bench/trivial` with the same JSON as the portal's trivial route, and no
//! middleware, no TLS, no connection info, `axum::serve` on a default multi-thread runtime.
//! It is the ceiling the portal's own trivial route is compared with in the same run.
//!
//!   axum-hello [LISTEN]      # default 127.0.0.1:0; prints `PORTAL-READY {"url":...}`

use std::io::Write;

use axum::routing::post;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let app = Router::new().route(
        "/bench/trivial",
        post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                "{\"outcome\":\"ok\"}",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    // The same ready line as the portal's, so run.sh starts both the same way.
    let mut out = std::io::stdout().lock();
    writeln!(out, "PORTAL-READY {{\"url\":\"http://{addr}\"}}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, app).await
}
