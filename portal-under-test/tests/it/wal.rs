//! The SQLite write-ahead log stays bounded under sustained help desk lookups over real HTTP
//! on loopback (each lookup commits an audit row through the group-commit writer).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Key, Portal};

/// The writer truncates the WAL above this in the test (64 MiB in a running portal).
const LIMIT: u64 = 128 * 1024;
/// What the test promises: the limit and a few batches.
const BOUND: u64 = 512 * 1024;
/// Lookups sent: ~170 bytes of audit table each, over twice `BOUND` in all. Without
/// the writer's truncation this run's WAL reached 29.7 MB and was never emptied (measured
/// with the limit set to 1 TiB); with it, 0.26 MB at most, emptied 460 times (limit 32 KiB).
const LOOKUPS: usize = 10_000;
const CLIENTS: usize = 16;
const HELPDESK: &str = "CONTOSO\\hd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_sustained_http_lookups() {
    let p = Portal::with_wal_limit(LIMIT);
    p.create_account(HELPDESK, "advanced_helpdesk").await;
    p.settings(json!({"lookup_rate_limit_exempt": [HELPDESK]}))
        .await;
    let token = p.api_token(HELPDESK).await;
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    p.escrow(&c, &k).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/helpdesk/lookup",
        listener.local_addr().unwrap()
    );
    let router = p.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, token, sent) = (url.clone(), token.clone(), sent.clone());
            // Half present (shown, a disclosure mark too), half absent (not_found).
            let key_id = if i % 2 == 0 {
                k.prefix8()
            } else {
                Key::random().prefix8()
            };
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while sent.fetch_add(1, Ordering::Relaxed) < LOOKUPS {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"key_id": key_id, "reason": "Lost PIN"}))
                        .send()
                        .await
                        .unwrap();
                    assert!(matches!(r.status().as_u16(), 200 | 404), "{}", r.status());
                }
            })
        })
        .collect();

    let wal = p.dir.path().join("portal.sqlite3-wal");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut largest, mut emptied, mut last) = (0u64, 0u32, 0u64);
    while clients.iter().any(|c| !c.is_finished()) {
        assert!(Instant::now() < deadline, "the load did not finish in time");
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
        if size < last / 2 {
            emptied += 1;
        }
        last = size;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    server.abort();

    let rows = p.audit("source=api").await.len();
    assert_eq!(rows, LOOKUPS, "one audit row per lookup");
    let db = std::fs::metadata(p.dir.path().join("portal.sqlite3"))
        .unwrap()
        .len();
    assert!(
        db > 2 * BOUND,
        "the load must push several bounds through the WAL: {db} bytes"
    );
    assert!(
        largest <= BOUND,
        "the WAL reached {largest} bytes (bound {BOUND})"
    );
    assert!(emptied >= 3, "the WAL was emptied {emptied} times");
}
