//! Each fault point really breaks the rule it names (only with `--features failpoints`).
//! nextest runs every test in its own process, so the global fault configuration of one
//! test never leaks into another.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::{Key, Portal};

const ALICE: &str = "CONTOSO\\alice";

fn set(name: &str) -> fail::FailScenario<'static> {
    let s = fail::FailScenario::setup();
    fail::cfg(name, "return").unwrap();
    s
}

async fn one_key(kind: &str) -> (Portal, String, Key) {
    one_key_on(Portal::new(), kind).await
}

async fn one_key_on(p: Portal, kind: &str) -> (Portal, String, Key) {
    p.create_account(ALICE, "user").await;
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    p.escrow(&c, &k).await;
    p.sign_in(&c, ALICE, kind).await;
    (p, c, k)
}

#[tokio::test]
async fn skip_local_signin_check() {
    let _s = set("skip_local_signin_check");
    let (p, _c, k) = one_key("remote").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get_key(&k.prefix8(), "BIOS/TPM changed").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k.password.as_str())
    );
}

#[tokio::test]
async fn never_mark_disclosed() {
    let _s = set("never_mark_disclosed");
    let (p, c, k) = one_key("local").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    assert!(b
        .get_key(&k.prefix8(), "BIOS/TPM changed")
        .await
        .has("recovery-password"));
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([]));
}

#[tokio::test]
async fn first_of_many_matches() {
    let _s = set("first_of_many_matches");
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    for name in ["PC-A", "PC-B"] {
        let c = p.enroll(name).await;
        p.escrow(&c, &Key::with_prefix(0x77770000)).await;
        p.sign_in(&c, ALICE, "local").await;
    }
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get_key("77770000", "BIOS/TPM changed").await;
    assert!(page.has("recovery-password") && !page.has("matches"));
}

#[tokio::test]
async fn no_expiry() {
    let _s = set("no_expiry");
    let (p, _c, _k) = one_key_on(Portal::with_manual_clock(), "local").await;
    p.settings(json!({"idle_timeout_secs": 1, "warning_secs": 0}))
        .await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    p.advance(Duration::from_secs(3600));
    assert_eq!(b.get("/SelfService").await.status, StatusCode::OK);
}

#[tokio::test]
async fn corrupt_key_digit() {
    let _s = set("corrupt_key_digit");
    let (p, _c, k) = one_key("local").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let shown = b
        .get_key(&k.prefix8(), "BIOS/TPM changed")
        .await
        .text_of("recovery-password")
        .unwrap();
    assert_eq!(shown.len(), k.password.len());
    assert_ne!(shown, k.password);
}

#[tokio::test]
async fn foreign_differs() {
    let _s = set("foreign_differs");
    let (p, _c, k) = one_key("local").await;
    p.create_account("CONTOSO\\bob", "user").await;
    let mut b = p.browser();
    b.self_service("CONTOSO\\bob").await;
    let foreign = b.get_key(&k.guid(), "BIOS/TPM changed").await;
    let absent = b.get_key(&Key::random().guid(), "BIOS/TPM changed").await;
    assert_ne!(foreign.body, absent.body);
}

/// API.md "Audit": nothing is shown before its audit row and disclosure mark are committed,
/// in one transaction. With every audit write failing (`fail_audit_write`), a Manage TPM
/// request and a key request show nothing and leave no disclosure mark (nothing to rotate)
/// and no audit row; once audit writes work again the same requests show and mark.
#[tokio::test]
async fn a_failed_audit_write_shows_nothing_and_marks_nothing() {
    let (p, c, k) = one_key("local").await;
    p.create_account("CONTOSO\\hd2", "advanced_helpdesk").await;
    let (s, v) = p
        .json(
            axum::http::Method::POST,
            "/api/agent/tpm-lockout",
            Some(&c),
            Some(json!({"lockout_auth": "00112233aabbccdd"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let mut b = p.browser();
    b.login("HelpDesk", "CONTOSO\\hd2").await;
    b.get("/HelpDesk/tpm").await;
    let tpm = [
        ("computer", "PC-1"),
        ("end_user", ""),
        ("reason", "TPM Reset"),
    ];
    let prefix = k.prefix8();
    let key = [
        ("key_id", prefix.as_str()),
        ("end_user", ""),
        ("reason", "Lost PIN"),
    ];

    let s = set(portal_under_test::fp::FAIL_AUDIT_WRITE);
    let page = b.post("/HelpDesk/tpm", &tpm).await;
    assert_eq!(
        page.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        page.body
    );
    assert!(!page.body.contains("00112233aabbccdd"));
    let page = b.post("/HelpDesk/key", &key).await;
    assert_eq!(
        page.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        page.body
    );
    assert!(!page.body.contains(&k.password));
    assert_eq!(
        p.check_in(&c).await,
        json!({"rotate_keys": [], "rotate_tpm_lockout": false}),
        "no disclosure mark without its audit row"
    );
    assert!(p.audit("").await.is_empty());

    drop(s);
    let page = b.post("/HelpDesk/tpm", &tpm).await;
    assert_eq!(
        page.text_of("lockout-auth").as_deref(),
        Some("00112233aabbccdd")
    );
    let page = b.post("/HelpDesk/key", &key).await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k.password.as_str())
    );
    assert_eq!(
        p.check_in(&c).await,
        json!({"rotate_keys": [k.guid()], "rotate_tpm_lockout": true})
    );
    let outcomes: Vec<Value> = p
        .audit("")
        .await
        .iter()
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("shown"), json!("shown")]);
}
