use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::Portal;

#[tokio::test]
async fn settings_get_put_partial_and_validated() {
    let p = Portal::new();
    let (s, v) = p
        .json(
            Method::GET,
            "/api/admin/settings",
            Some(&p.admin_token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["idle_timeout_secs"], 300);
    assert_eq!(v["warning_secs"], 60);
    let (s, v) = p
        .json(
            Method::PUT,
            "/api/admin/settings",
            Some(&p.admin_token),
            Some(json!({"company_name": "Fabrikam"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["company_name"], "Fabrikam");
    assert_eq!(
        v["idle_timeout_secs"], 300,
        "untouched fields keep their value"
    );
    for (body, field) in [
        (json!({"idle_timeout_secs": 0}), "idle_timeout_secs"),
        (
            json!({"helpdesk_url": "javascript:alert(1)"}),
            "helpdesk_url",
        ),
        (json!({"company_name": ""}), "company_name"),
        (json!({"lookup_failure_limit": 0}), "lookup_failure_limit"),
    ] {
        let (s, v) = p
            .json(
                Method::PUT,
                "/api/admin/settings",
                Some(&p.admin_token),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["field"], field);
    }
    let (s, _) = p
        .json(
            Method::PUT,
            "/api/admin/settings",
            Some(&p.admin_token),
            Some(json!({"bogus": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The company name shows on the pages.
    let mut b = p.browser();
    assert!(b.get("/SelfService/login").await.body.contains("Fabrikam"));
    // And survives a restart.
    let p = p.restart();
    assert_eq!(p.state.settings().company_name, "Fabrikam");
}

#[tokio::test]
async fn accounts_api_validates() {
    let p = Portal::new();
    let post = |body: serde_json::Value| {
        let p = &p;
        async move {
            p.json(
                Method::POST,
                "/api/admin/accounts",
                Some(&p.admin_token),
                Some(body),
            )
            .await
        }
    };
    let (s, _) =
        post(json!({"username": "CONTOSO\\x", "password": "long enough", "role": "user"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) =
        post(json!({"username": "contoso\\X", "password": "long enough", "role": "user"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, v) = post(json!({"username": "y", "password": "short", "role": "user"})).await;
    assert_eq!(v["error"]["field"], "password");
    let (_, v) = post(json!({"username": "y", "password": "long enough", "role": "root"})).await;
    assert_eq!(v["error"]["field"], "role");
    let (_, v) = post(json!({"password": "long enough", "role": "user"})).await;
    assert_eq!(v["error"]["field"], "username");
    let (s, _) = p
        .json(
            Method::POST,
            "/api/admin/accounts/nobody/api-tokens",
            Some(&p.admin_token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn audit_filters_and_validation() {
    let p = Portal::new();
    for (q, field) in [
        ("since=yesterday", "since"),
        ("source=web", "source"),
        ("outcome=maybe", "outcome"),
        ("format=xml", "format"),
    ] {
        let (s, v) = p
            .json(
                Method::GET,
                &format!("/api/admin/audit?{q}"),
                Some(&p.admin_token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(v["error"]["field"], field);
    }
    let rows = p
        .audit("since=2000-01-01T00:00:00Z&source=self_service")
        .await;
    assert!(rows.is_empty());
}

#[tokio::test]
async fn admin_pages_create_accounts_tokens_and_export_audit() {
    let p = Portal::new();
    let mut b = p.browser();
    let login = b.login("Admin", "admin").await;
    assert_eq!(login.location.as_deref(), Some("/Admin"));
    let page = b.get("/Admin").await;
    assert!(page.body.contains("/Admin/audit.csv") && page.body.contains("/Admin/audit.json"));
    let created = b
        .post(
            "/Admin/accounts",
            &[
                ("username", "CONTOSO\\dave"),
                ("password", crate::common::PASSWORD),
                ("role", "helpdesk"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let bad = b
        .post(
            "/Admin/accounts",
            &[("username", "z"), ("password", "1"), ("role", "user")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text_of("error").unwrap().contains("password"));
    let tok = b.post("/Admin/enrollment-tokens", &[]).await;
    let token = tok.text_of("enrollment-token").unwrap();
    let (s, _) = p
        .json(
            Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"enrollment_token": token, "device_name": "PC-X"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let set = b
        .post(
            "/Admin/settings",
            &[("company_name", "Woodgrove"), ("idle_timeout_secs", "600")],
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(p.state.settings().company_name, "Woodgrove");
    assert_eq!(p.state.settings().idle_timeout_secs, 600);
    let bad = b.post("/Admin/settings", &[("warning_secs", "soon")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text_of("error").unwrap().contains("warning_secs"));
    let csv = b.get("/Admin/audit.csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.body.starts_with("id,time,source"));
    let audit = b.get("/Admin/audit").await;
    assert!(audit.has("audit"));
    // Other roles may not.
    let mut hd = p.browser();
    assert_eq!(
        hd.login("Admin", "CONTOSO\\dave").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn openapi_served_equals_committed_file() {
    let p = Portal::new();
    let req = axum::http::Request::builder()
        .uri("/openapi.json")
        .body(axum::body::Body::empty())
        .unwrap();
    let (s, _, body) = p.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    assert_eq!(body, file);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/agent/enroll",
        "/api/agent/keys",
        "/api/helpdesk/lookup",
        "/api/admin/audit",
        "/healthz",
    ] {
        assert!(v["paths"].get(path).is_some(), "openapi documents {path}");
    }
}

/// Every site's home answers with or without a trailing slash, as `/SelfService/` always did:
/// a sign-in redirect signed out, the page signed in.
#[tokio::test]
async fn every_site_home_answers_with_a_trailing_slash() {
    let p = Portal::new();
    p.create_account("root", "admin").await;
    for (site, home_id) in [
        ("SelfService", "accept-notice"),
        ("HelpDesk", "get-key"),
        ("Admin", "create-account"),
    ] {
        let mut b = p.browser();
        let out = b.get(&format!("/{site}/")).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER, "/{site}/");
        assert_eq!(out.location, Some(format!("/{site}/login")));
        b.login(site, "root").await;
        let home = b.get(&format!("/{site}/")).await;
        let home = match home.location {
            // Self-service first shows the notice.
            Some(to) => b.get(&to).await,
            None => home,
        };
        assert_eq!(home.status, StatusCode::OK, "/{site}/");
        assert!(home.has(home_id), "/{site}/: {}", home.body);
    }
}

/// The admin site's audit exports and page read a malformed query (a filter given twice)
/// as the API does, after the sign-in check: signed out, the sign-in redirect; signed in, a
/// `query` error (JSON for the exports, the page's `id="error"` for the table).
#[tokio::test]
async fn admin_audit_pages_refuse_a_malformed_query_like_the_api() {
    let p = Portal::new();
    p.create_account("root", "admin").await;
    let twice = "since=2000-01-01T00:00:00Z&since=2001-01-01T00:00:00Z";
    let mut b = p.browser();
    for path in ["audit.json", "audit.csv", "audit"] {
        let out = b.get(&format!("/Admin/{path}?{twice}")).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER, "{path} signed out");
        assert_eq!(out.location.as_deref(), Some("/Admin/login"));
    }
    b.login("Admin", "root").await;
    for path in ["audit.json", "audit.csv"] {
        let out = b.get(&format!("/Admin/{path}?{twice}")).await;
        assert_eq!(out.status, StatusCode::BAD_REQUEST, "{path}");
        let v: serde_json::Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(v["error"]["field"], "query", "{path}");
    }
    let page = b.get(&format!("/Admin/audit?{twice}")).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.has("error"), "{}", page.body);
}
