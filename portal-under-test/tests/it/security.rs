use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;

use crate::common::{Key, Portal};

const ALICE: &str = "CONTOSO\\alice";

async fn alice_with_key() -> (Portal, String, Key) {
    alice_with_key_on(Portal::new()).await
}

async fn alice_with_key_on(p: Portal) -> (Portal, String, Key) {
    p.create_account(ALICE, "user").await;
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    p.escrow(&c, &k).await;
    p.sign_in(&c, ALICE, "local").await;
    (p, c, k)
}

#[tokio::test]
async fn forms_without_or_with_a_wrong_csrf_token_are_refused() {
    let (p, c, k) = alice_with_key().await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let none = b
        .post_raw(
            "/SelfService/key",
            &[
                ("key_id".into(), k.prefix8()),
                ("reason".into(), "BIOS/TPM changed".into()),
            ],
        )
        .await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert!(none.has("error"));
    let wrong = b
        .post(
            "/SelfService/key",
            &[
                ("key_id", &k.prefix8()),
                ("reason", "BIOS/TPM changed"),
                ("csrf_token", "c_forged"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.body.contains(&k.password));
    assert_eq!(
        p.check_in(&c).await["rotate_keys"],
        json!([]),
        "nothing disclosed"
    );

    let mut fresh = p.browser();
    fresh.get("/SelfService/login").await;
    let login = fresh
        .post_raw(
            "/SelfService/login",
            &[
                ("username".into(), ALICE.into()),
                ("password".into(), crate::common::PASSWORD.into()),
            ],
        )
        .await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
}

/// A POST with no form body at all (`curl -X POST`) or a JSON one carries no `csrf_token`:
/// 403 with the page's `id="error"`, like any POST without one (API.md §2), never a bare
/// text 400, on every site's forms.
#[tokio::test]
async fn posts_without_a_form_body_are_refused_as_missing_csrf() {
    let (p, c, k) = alice_with_key().await;
    p.create_account("hd", "advanced_helpdesk").await;
    p.create_account("root", "admin").await;
    let mut user = p.browser();
    user.self_service(ALICE).await;
    let mut hd = p.browser();
    hd.login("HelpDesk", "hd").await;
    let mut admin = p.browser();
    admin.login("Admin", "root").await;
    let mut signed_out = p.browser();
    signed_out.get("/SelfService/login").await;
    let cases = [
        (&signed_out, "/SelfService/login"),
        (&user, "/SelfService/notice"),
        (&user, "/SelfService/key"),
        (&user, "/SelfService/keepalive"),
        (&user, "/SelfService/logout"),
        (&hd, "/HelpDesk/key"),
        (&hd, "/HelpDesk/tpm"),
        (&admin, "/Admin/accounts"),
        (&admin, "/Admin/settings"),
    ];
    for (browser, path) in cases {
        let bodies = [
            (None, String::new()),
            (
                Some("application/json"),
                json!({"key_id": k.guid()}).to_string(),
            ),
        ];
        for (content_type, body) in bodies {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::COOKIE, browser.cookie.clone().unwrap());
            if let Some(t) = content_type {
                req = req.header(header::CONTENT_TYPE, t);
            }
            let (status, headers, text) = p.raw(req.body(Body::from(body)).unwrap()).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} {content_type:?}: {text}"
            );
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html"),
                "{path}"
            );
            assert!(text.contains("id=\"error\""), "{path}: {text}");
        }
    }
    assert_eq!(
        p.check_in(&c).await["rotate_keys"],
        json!([]),
        "nothing disclosed"
    );
    let still = user.get("/SelfService").await;
    assert_eq!(
        still.status,
        StatusCode::OK,
        "the refused logout kept the session"
    );
}

#[tokio::test]
async fn session_id_is_renewed_at_sign_in_and_bad_passwords_fail() {
    let (p, _c, _k) = alice_with_key().await;
    let mut b = p.browser();
    b.get("/SelfService/login").await;
    let before = b.cookie.clone().unwrap();
    let bad = b
        .post(
            "/SelfService/login",
            &[("username", ALICE), ("password", "wrong password")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.has("error"));
    let inj = b
        .post(
            "/SelfService/login",
            &[("username", "' OR 1=1 --"), ("password", "x' OR '1'='1")],
        )
        .await;
    assert_eq!(inj.status, StatusCode::UNAUTHORIZED);
    let ok = b
        .post(
            "/SelfService/login",
            &[("username", ALICE), ("password", crate::common::PASSWORD)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_ne!(
        b.cookie.clone().unwrap(),
        before,
        "new session id after sign-in"
    );
    // The old (pre-sign-in) id is worthless.
    let mut old = p.browser();
    old.cookie = Some(before);
    assert_eq!(old.get("/SelfService").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_lookups_are_rate_limited_per_account() {
    let (p, _c, k) = alice_with_key().await;
    p.settings(json!({"lookup_failure_limit": 3, "lookup_failure_window_secs": 600}))
        .await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    for _ in 0..3 {
        let miss = b
            .get_key(&Key::random().prefix8(), "BIOS/TPM changed")
            .await;
        assert_eq!(miss.status, StatusCode::NOT_FOUND);
    }
    let limited = b.get_key(&k.prefix8(), "BIOS/TPM changed").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.has("error"));
    assert!(!limited.body.contains(&k.password));
    let rows = p.audit("outcome=rate_limited").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["requester"], ALICE);
    // Another account is not affected.
    p.create_account("CONTOSO\\carol", "user").await;
    let mut c2 = p.browser();
    c2.self_service("CONTOSO\\carol").await;
    assert_eq!(
        c2.get_key(&k.prefix8(), "BIOS/TPM changed").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn inactivity_warning_and_server_side_expiry() {
    // The sessions' clock moves only when the test says: no sleeps, no race with a slow
    // machine. Idle 1 s + warning 1 s: a session idle for 2 s is alive, past 2 s it is not.
    let (p, _c, k) = alice_with_key_on(Portal::with_manual_clock()).await;
    p.settings(json!({"idle_timeout_secs": 1, "warning_secs": 1}))
        .await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get("/SelfService").await;
    for id in ["idle-warning", "idle-countdown", "idle-continue"] {
        assert!(page.has(id), "{id}");
    }
    assert!(
        page.body.contains("data-idle-secs=\"1\"") && page.body.contains("data-warning-secs=\"1\"")
    );
    assert!(page.body.contains("/SelfService/keepalive"));

    // Continue after the warning keeps the session alive.
    p.advance(Duration::from_millis(1300));
    let keep = b.post("/SelfService/keepalive", &[]).await;
    assert_eq!(keep.status, StatusCode::NO_CONTENT);
    p.advance(Duration::from_millis(2000));
    assert_eq!(
        b.get("/SelfService").await.status,
        StatusCode::OK,
        "idle exactly idle + warning: still alive"
    );

    // No answer: idle longer than idle + warning -> expiry page, session dead.
    p.advance(Duration::from_millis(2001));
    let expired = b.get_key(&k.prefix8(), "BIOS/TPM changed").await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired.has("expired"));
    assert!(!expired.body.contains(&k.password));
    let after = b.get("/SelfService").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location.as_deref(), Some("/SelfService/login"));
    let rows = p.audit("outcome=expired_session").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["requester"], ALICE);
    let page = b.get("/SelfService/expired").await;
    assert!(page.has("expired"));
    // The script's keepalive on a dead session gets 401, not a redirect.
    let keep = b.post("/SelfService/keepalive", &[]).await;
    assert_eq!(keep.status, StatusCode::UNAUTHORIZED);
    assert!(keep.has("expired"));
}

#[tokio::test]
async fn bodies_are_capped_and_json_errors_name_the_field() {
    let (p, c, _k) = alice_with_key().await;
    let big = "x".repeat(200 * 1024);
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/sign-ins",
            Some(&c),
            Some(json!({"user": big, "kind": "local"})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "too_large");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/SelfService/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("username={big}")))
        .unwrap();
    let (s, headers, page) = p.raw(req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // A form's refusal is the site's page with `id="error"` (API.md §2), not bare text.
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.contains("id=\"error\""), "{page}");

    let cases = [
        (
            "/api/agent/sign-ins",
            json!({"user": ALICE, "kind": "console"}),
            "kind",
        ),
        ("/api/agent/sign-ins", json!({"kind": "local"}), "user"),
        (
            "/api/agent/keys",
            json!({"volume_id": "nope", "key_protector_id": Key::random().guid(), "recovery_password": Key::random().password, "protector_type": "recovery_password"}),
            "volume_id",
        ),
        (
            "/api/agent/keys",
            json!({"volume_id": "{11111111-2222-3333-4444-555555555555}", "key_protector_id": "{1234}", "recovery_password": Key::random().password, "protector_type": "recovery_password"}),
            "key_protector_id",
        ),
        (
            "/api/agent/keys",
            json!({"volume_id": "{11111111-2222-3333-4444-555555555555}", "key_protector_id": Key::random().guid(), "recovery_password": "123", "protector_type": "recovery_password"}),
            "recovery_password",
        ),
        (
            "/api/agent/keys",
            json!({"volume_id": "{11111111-2222-3333-4444-555555555555}", "key_protector_id": Key::random().guid(), "recovery_password": Key::random().password, "protector_type": "tpm"}),
            "protector_type",
        ),
        (
            "/api/agent/tpm-lockout",
            json!({"lockout_auth": "xyz"}),
            "lockout_auth",
        ),
        (
            "/api/agent/rotations",
            json!({"old_key_protector_id": "1"}),
            "old_key_protector_id",
        ),
    ];
    for (path, body, field) in cases {
        let (s, v) = p.json(Method::POST, path, Some(&c), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {v}");
        assert_eq!(v["error"]["code"], "invalid");
        assert_eq!(v["error"]["field"], field, "{path} {v}");
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/agent/sign-ins")
        .header(header::AUTHORIZATION, format!("Bearer {c}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (s, _, text) = p.raw(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["field"], "body");
}

/// A JSON body that is not an object is a `body` error (not a field named `[0]`), and no
/// message names a Rust type.
#[tokio::test]
async fn a_json_body_must_be_an_object_and_errors_name_no_rust_types() {
    let (p, c, _k) = alice_with_key().await;
    for body in [
        json!([1]),
        json!(["x", "local"]),
        json!("x"),
        json!(5),
        json!(null),
    ] {
        for path in ["/api/agent/sign-ins", "/api/agent/keys/bulk"] {
            let (s, v) = p
                .json(Method::POST, path, Some(&c), Some(body.clone()))
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}");
            assert_eq!(v["error"]["field"], "body", "{path} {body}: {v}");
            assert_eq!(v["error"]["message"], "body must be a JSON object");
        }
    }
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/keys/bulk",
            Some(&c),
            Some(json!({"keys": [Key::random().json(), 5]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "keys[1]");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("expected a JSON object") && !message.contains("struct"),
        "{message}"
    );
}

/// The auth scheme is case-insensitive (RFC 9110 §11.1); another scheme is no token.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let (p, c, _k) = alice_with_key().await;
    for (scheme, status) in [
        ("Bearer", StatusCode::OK),
        ("bearer", StatusCode::OK),
        ("BEARER", StatusCode::OK),
        ("Basic", StatusCode::UNAUTHORIZED),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/agent/check-in")
            .header(header::AUTHORIZATION, format!("{scheme} {c}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(p.raw(req).await.0, status, "{scheme}");
    }
}

#[tokio::test]
async fn admin_api_needs_an_admin_token() {
    let (p, _c, _k) = alice_with_key().await;
    let (s, _) = p.json(Method::GET, "/api/admin/settings", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let t = p.api_token(ALICE).await;
    let (s, v) = p
        .json(Method::GET, "/api/admin/settings", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["error"]["code"], "forbidden");
}

/// What a caller types lands in the audit (the end user of a help desk request, the name
/// typed at a throttled sign-in); the CSV export neutralises every leading formula
/// character, `-` too (`-2+3+cmd|...`), for the admin who opens it in a spreadsheet.
#[tokio::test]
async fn the_audit_csv_neutralises_formulas_typed_by_callers() {
    let (p, _c, _k) = alice_with_key().await;
    p.create_account("adv", "advanced_helpdesk").await;
    let t = p.api_token("adv").await;
    let typed = ["-2+3+cmd|' /C calc'!A0", "=1+1", "+1", "@SUM(1)"];
    for user in typed {
        let (s, _) = p
            .json(
                Method::POST,
                "/api/helpdesk/lookup",
                Some(&t),
                Some(json!({"key_id": "00000000", "user": user, "reason": "Other"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (_, csv) = p
        .json(
            Method::GET,
            "/api/admin/audit?format=csv&outcome=not_found",
            Some(&p.admin_token),
            None,
        )
        .await;
    let csv = csv.as_str().unwrap();
    for user in typed {
        let quoted = format!(",\"'{}\",", user.replace('"', "\"\""));
        assert!(csv.contains(&quoted), "{user} not neutralised in:\n{csv}");
    }
}

#[tokio::test]
async fn no_recovery_password_in_audit_or_store_plaintext() {
    let (p, _c, k) = alice_with_key().await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    b.get_key(&k.prefix8(), "BIOS/TPM changed").await;
    let (_, csv) = p
        .json(
            Method::GET,
            "/api/admin/audit?format=csv",
            Some(&p.admin_token),
            None,
        )
        .await;
    let csv = csv.as_str().unwrap().to_string();
    assert!(csv
        .starts_with("id,time,source,requester,end_user,device,key_id,key_type,reason,outcome\n"));
    assert!(csv.contains("\"shown\""));
    assert!(!csv.contains(&k.password));
    // At rest: the store never holds the password in clear (the SQLite file and its log, or
    // every PostgreSQL table's rows, BYTEA shown as hex).
    let at_rest = match &p.database_url {
        None => vec![
            std::fs::read(p.dir.path().join("portal.sqlite3")).unwrap(),
            std::fs::read(p.dir.path().join("portal.sqlite3-wal")).unwrap_or_default(),
        ],
        Some(url) => {
            let text = crate::common::postgres_text(url);
            assert!(text.contains("shown"), "the dump holds the audit rows");
            assert!(!text.contains(&hex::encode(k.password.as_bytes())));
            vec![text.into_bytes()]
        }
    };
    for bytes in at_rest {
        assert!(!bytes
            .windows(k.password.len())
            .any(|w| w == k.password.as_bytes()));
    }
}

#[tokio::test]
async fn the_session_cookie_is_read_among_other_cookies_and_a_bogus_one_is_no_session() {
    let (p, _c, _k) = alice_with_key().await;
    let mut b = p.browser();
    b.self_service(ALICE).await;
    let session = b.cookie.clone().unwrap();
    assert!(session.starts_with("portal_session="), "{session}");

    b.cookie = Some(format!("portal_lang=ja; tracking=1; {session}"));
    let page = b.get("/SelfService").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("<html lang=\"ja\""),
        "the language cookie is read too"
    );

    for bogus in [
        format!("portal_session={}", "s".repeat(129)),
        "portal_session=".to_string(),
        "portal_session_x=1".to_string(),
    ] {
        b.cookie = Some(bogus.clone());
        let page = b.get("/SelfService").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{bogus}");
        assert_eq!(page.location.as_deref(), Some("/SelfService/login"));
    }
}
