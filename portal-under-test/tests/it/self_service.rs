use std::time::Instant;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Key, Portal};

const ALICE: &str = "CONTOSO\\alice";
const BOB: &str = "CONTOSO\\bob";

/// Alice's device (PC-0001) with one escrowed key, her sign-in on it, her account, and a
/// browser she has signed in to self-service with.
async fn alice_signed_in_with_a_key(p: &Portal) -> (String, Key, crate::common::Browser) {
    let cred = p.enroll("PC-0001").await;
    let key = Key::random();
    p.escrow(&cred, &key).await;
    p.sign_in(&cred, ALICE, "local").await;
    p.create_account(ALICE, "user").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    (cred, key, b)
}

#[tokio::test]
async fn full_flow_shows_the_escrowed_key() {
    let p = Portal::new();
    let (cred, key, mut b) = alice_signed_in_with_a_key(&p).await;
    let page = b.get("/SelfService").await;
    for r in [
        "BIOS/TPM changed",
        "OS filed modified",
        "Lost PIN/passphrase",
    ] {
        assert!(
            page.body.contains(&format!("value=\"{r}\"")),
            "reason {r} offered"
        );
    }
    let shown = b.get_key(&key.prefix8(), "BIOS/TPM changed").await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(
        shown.text_of("recovery-password").as_deref(),
        Some(key.password.as_str())
    );

    let rows = p.audit("outcome=shown").await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["source"], "self_service");
    assert_eq!(r["requester"], ALICE);
    assert_eq!(r["device"], "PC-0001");
    assert_eq!(r["key_id"], key.guid());
    assert_eq!(r["key_type"], "recovery_password");
    assert_eq!(r["reason"], "BIOS/TPM changed");
    // Shown once = used once: the device is told to rotate it.
    assert_eq!(p.check_in(&cred).await["rotate_keys"], json!([key.guid()]));
}

#[tokio::test]
async fn all_32_digits_in_any_form_work() {
    let p = Portal::new();
    let (_, key, mut b) = alice_signed_in_with_a_key(&p).await;
    let bare = format!("{:032x}", key.id);
    let page = b.get_key(&bare, "Lost PIN/passphrase").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(key.password.as_str())
    );
}

#[tokio::test]
async fn several_own_matches_ask_for_32_digits() {
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    let k1 = Key::with_prefix(0xABCD0001);
    let k2 = Key::with_prefix(0xABCD0001);
    for (name, k) in [("PC-A", &k1), ("PC-B", &k2)] {
        let c = p.enroll(name).await;
        p.escrow(&c, k).await;
        p.sign_in(&c, ALICE, "local").await;
    }
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get_key("ABCD0001", "OS filed modified").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.has("matches"), "{}", page.body);
    assert!(!page.has("recovery-password"));
    assert!(
        !page.body.contains(&k1.guid()) && !page.body.contains(&k2.guid()),
        "IDs are not listed"
    );
    let page = b.get_key(&k2.guid(), "OS filed modified").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k2.password.as_str())
    );
    assert_eq!(p.audit("outcome=ambiguous").await.len(), 1);
}

#[tokio::test]
async fn another_users_key_with_the_same_prefix_does_not_make_it_ambiguous() {
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    let mine = Key::with_prefix(0x12345678);
    let theirs = Key::with_prefix(0x12345678);
    let c1 = p.enroll("PC-A").await;
    p.escrow(&c1, &mine).await;
    p.sign_in(&c1, ALICE, "local").await;
    let c2 = p.enroll("PC-B").await;
    p.escrow(&c2, &theirs).await;
    p.sign_in(&c2, BOB, "local").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get_key("12345678", "Lost PIN/passphrase").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(mine.password.as_str())
    );
}

#[tokio::test]
async fn remote_only_or_imported_users_are_sent_to_the_help_desk() {
    let p = Portal::new();
    p.settings(json!({"helpdesk_text": "Call 555-0100.", "helpdesk_url": "https://help.example.test/bitlocker"}))
        .await;
    p.create_account(ALICE, "user").await;
    let remote = Key::random();
    let c = p.enroll("PC-R").await;
    p.escrow(&c, &remote).await;
    p.sign_in(&c, ALICE, "remote").await;
    // Imported with a user association but no local sign-in.
    let imported = Key::random();
    let line = json!({"device": "PC-I", "user": ALICE, "volume_id": "{11111111-2222-3333-4444-555555555555}",
        "key_protector_id": imported.guid(), "recovery_password": imported.password, "protector_type": "recovery_password"});
    let sealer = &p.state.sealer;
    let created =
        portal_under_test::import::import_jsonl(&line.to_string(), sealer, p.state.store.as_ref())
            .unwrap();
    for e in created {
        p.state.index.insert(e);
    }

    let mut b = p.browser();
    b.self_service(ALICE).await;
    for k in [&remote, &imported] {
        let page = b.get_key(&k.prefix8(), "BIOS/TPM changed").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(page.has("helpdesk-message"));
        assert!(!page.has("recovery-password"));
        assert!(!page.body.contains(&k.password));
        let msg = &page.body[page.body.find("id=\"helpdesk-message\"").unwrap()..];
        assert!(
            msg.contains("Call 555-0100.") && msg.contains("https://help.example.test/bitlocker")
        );
    }
    let rows = p.audit("outcome=not_eligible").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["device"], "PC-R");
    assert_eq!(rows[1]["device"], "PC-I");
    // Nothing was disclosed.
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([]));
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test]
async fn foreign_and_absent_key_ids_are_indistinguishable() {
    let p = Portal::new();
    p.settings(json!({"lookup_failure_limit": 1_000_000})).await;
    p.create_account(ALICE, "user").await;
    let c = p.enroll("PC-BOB").await;
    let foreign = Key::random();
    p.escrow(&c, &foreign).await;
    p.sign_in(&c, BOB, "local").await;
    let absent = loop {
        let k = Key::random();
        if k.id >> 96 != foreign.id >> 96 {
            break k;
        }
    };
    let mut b = p.browser();
    b.self_service(ALICE).await;
    for (f, a) in [
        (foreign.prefix8(), absent.prefix8()),
        (foreign.guid(), absent.guid()),
    ] {
        let pf = b.get_key(&f, "BIOS/TPM changed").await;
        let pa = b.get_key(&a, "BIOS/TPM changed").await;
        assert_eq!(pf.status, StatusCode::NOT_FOUND);
        assert_eq!(pf.status, pa.status);
        assert_eq!(pf.body, pa.body, "byte-identical answers");
        assert!(pf.has("error"));
    }
    // Response-time distributions, interleaved so machine load affects both alike.
    let n = 300;
    let (mut tf, mut ta) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let pf = b.get_key(&foreign.prefix8(), "BIOS/TPM changed").await;
        tf.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let pa = b.get_key(&absent.prefix8(), "BIOS/TPM changed").await;
        ta.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(pf.body, pa.body);
    }
    let (mf, pf90) = (pct(&mut tf, 0.5), pct(&mut tf, 0.9));
    let (ma, pa90) = (pct(&mut ta, 0.5), pct(&mut ta, 0.9));
    println!("TIMING foreign: median {mf:.0} us p90 {pf90:.0} us; absent: median {ma:.0} us p90 {pa90:.0} us (n={n} each)");
    let diff = (mf - ma).abs();
    assert!(
        diff <= 0.25 * mf.max(ma) + 200.0,
        "medians differ: foreign {mf:.0} us vs absent {ma:.0} us"
    );
    // The audit knows the difference; the user does not.
    assert!(p.audit("outcome=denied").await.len() >= n);
    assert!(p.audit("outcome=not_found").await.len() >= n);
}

#[tokio::test]
async fn bad_key_id_and_reason_name_the_field() {
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    for bad in ["", "1234", "ZZZZZZZZ", "123456789", "' OR '1'='1"] {
        let page = b.get_key(bad, "BIOS/TPM changed").await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(page.text_of("error").unwrap().contains("key_id"), "{bad}");
    }
    for bad in ["", "Because", "BIOS changed"] {
        let page = b.get_key("ABCDEF01", bad).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.text_of("error").unwrap().contains("reason"));
    }
    // Validation failures are neither audited nor counted.
    assert!(p.audit("").await.is_empty());
}

#[tokio::test]
async fn key_form_needs_the_notice_first() {
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    let mut b = p.browser();
    b.login("SelfService", ALICE).await;
    let page = b.get("/SelfService").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/SelfService/notice"));
    let (s, _) = p.json(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

/// `Accept-Language` is negotiated by its weights (API.md §6 "Languages"): a higher `q` wins
/// whatever the order, and `q=0` refuses a language.
#[tokio::test]
async fn accept_language_weights_choose_the_page_language() {
    let p = Portal::new();
    for (accept, lang) in [
        ("ja-JP", "ja"),
        ("en;q=0.9, ja", "ja"),
        ("en;q=0.5, ja-JP;q=0.8", "ja"),
        ("ja;q=0", "en"),
        ("ja;q=0, en", "en"),
        ("fr, ja;q=0.1", "ja"),
    ] {
        let req = axum::http::Request::builder()
            .uri("/SelfService/login")
            .header(axum::http::header::ACCEPT_LANGUAGE, accept)
            .body(axum::body::Body::empty())
            .unwrap();
        let (status, headers, body) = p.raw(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["content-language"], lang,
            "Accept-Language: {accept}"
        );
        assert!(body.contains(&format!("<html lang=\"{lang}\"")), "{accept}");
    }
}

/// Surrounding white space around the key ID and the reason is ignored, as on the help desk
/// surfaces (API.md, conventions).
#[tokio::test]
async fn surrounding_spaces_in_key_id_and_reason_are_ignored() {
    let p = Portal::new();
    let (_, key, mut b) = alice_signed_in_with_a_key(&p).await;
    let page = b
        .get_key(&format!(" {} ", key.guid()), " Lost PIN/passphrase ")
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(key.password.as_str())
    );
}
