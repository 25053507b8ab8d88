//! Issue 20's defences: security headers, no-store on secrets, JSON 405s and field-named
//! type errors, private file modes, password sign-in throttling, old TLS refused, no secret
//! in the portal's log.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::common::{fast_config, ready_line, tls_portal, Key, Portal, PASSWORD};

const ALICE: &str = "CONTOSO\\alice";

fn header_of<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

/// The headers every HTML page must carry.
fn assert_html_security_headers(h: &HeaderMap, what: &str) {
    let csp = header_of(h, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert!(!csp.contains("unsafe-inline"), "{what}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-eval"), "{what}: CSP {csp:?}");
    assert_eq!(header_of(h, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header_of(h, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header_of(h, "referrer-policy"), "no-referrer", "{what}");
}

/// No inline `<script>` or `<style>` and no `style=`/`on…=` attributes: the CSP forbids them.
fn assert_no_inline_code(body: &str, what: &str) {
    assert!(!body.contains("<script>"), "{what}: inline script");
    assert!(!body.contains("<style"), "{what}: inline style");
    assert!(!body.contains(" style="), "{what}: style attribute");
    assert!(
        !body.contains(" onclick="),
        "{what}: event handler attribute"
    );
}

#[tokio::test]
async fn html_pages_carry_csp_and_security_headers_and_no_inline_code() {
    let p = Portal::new();
    let req = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();
    for path in [
        "/SelfService/login",
        "/HelpDesk/login",
        "/SelfService/expired",
    ] {
        let (s, h, body) = p.raw(req(path)).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_html_security_headers(&h, path);
        assert_no_inline_code(&body, path);
        assert!(
            h.get("strict-transport-security").is_none(),
            "no HSTS without TLS"
        );
    }
    // A signed-in page has the idle-warning script: it must come from a file the CSP allows.
    let mut b = p.browser();
    let r = b.login("Admin", "admin").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let mut get = Request::builder().uri("/Admin");
    if let Some(c) = &b.cookie {
        get = get.header(header::COOKIE, c);
    }
    let (s, h, body) = p.raw(get.body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_html_security_headers(&h, "/Admin");
    assert_no_inline_code(&body, "/Admin");
    assert!(body.contains("<script src=\"/static/idle.js\""), "{body}");
    let (s, h, js) = p.raw(req("/static/idle.js")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(header_of(&h, "content-type").starts_with("text/javascript"));
    assert_eq!(header_of(&h, "x-content-type-options"), "nosniff");
    assert!(js.contains("idle-warning"));
    let (s, h, css) = p.raw(req("/static/portal.css")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(header_of(&h, "content-type").starts_with("text/css"));
    assert!(css.contains("#idle-warning"));
}

#[tokio::test]
async fn json_answers_carrying_secrets_are_no_store() {
    let p = Portal::new();
    p.create_account("hd", "advanced_helpdesk").await;
    let token = p.api_token("hd").await;
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    p.escrow(&c, &k).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/helpdesk/lookup")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"key_id": k.guid(), "reason": "Lost PIN"}).to_string(),
        ))
        .unwrap();
    let (s, h, body) = p.raw(req).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains(&k.password));
    assert_eq!(header_of(&h, "cache-control"), "no-store");
    assert_eq!(header_of(&h, "x-content-type-options"), "nosniff");
    // Tokens and device credentials are secrets too.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/admin/enrollment-tokens")
        .header(header::AUTHORIZATION, format!("Bearer {}", p.admin_token))
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = p.raw(req).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(header_of(&h, "cache-control"), "no-store");
}

#[tokio::test]
async fn unsupported_methods_answer_405_with_the_json_error_shape() {
    let p = Portal::new();
    for (method, path) in [
        (Method::DELETE, "/api/admin/settings"),
        (Method::GET, "/api/agent/keys"),
        (Method::PATCH, "/api/helpdesk/lookup"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", p.admin_token))
            .body(Body::empty())
            .unwrap();
        let (s, h, body) = p.raw(req).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(h.get(header::ALLOW).is_some(), "{method} {path}: Allow");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: body {body:?} is not JSON: {e}"));
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        assert!(v["error"]["field"].is_null());
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(method.as_str()));
    }
}

#[tokio::test]
async fn a_type_error_names_the_field_not_the_body() {
    let p = Portal::new();
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    let mut bad = k.json();
    bad["recovery_password"] = json!(5);
    let (s, v) = p
        .json(Method::POST, "/api/agent/keys", Some(&c), Some(bad.clone()))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid");
    assert_eq!(v["error"]["field"], "recovery_password", "{v}");
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/keys/bulk",
            Some(&c),
            Some(json!({"keys": [k.json(), bad]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "keys[1].recovery_password", "{v}");
    let (s, v) = p
        .json(
            Method::PUT,
            "/api/admin/settings",
            Some(&p.admin_token),
            Some(json!({"idle_timeout_secs": "soon"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "idle_timeout_secs", "{v}");
    // An unknown settings field is refused, naming it.
    let (s, v) = p
        .json(
            Method::PUT,
            "/api/admin/settings",
            Some(&p.admin_token),
            Some(json!({"company": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "company", "{v}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_the_sqlite_files_are_private_whatever_the_umask() {
    use nix::sys::stat::{umask, Mode};
    use std::os::unix::fs::PermissionsExt;
    // A permissive umask (nextest runs each test in its own process).
    let old = umask(Mode::empty());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    {
        let state =
            portal_under_test::AppState::open_data_dir(&dir, fast_config(Default::default()))
                .unwrap();
        // A write, so the WAL and its index exist.
        let hash = state.hasher.hash(PASSWORD).unwrap();
        state
            .store
            .create_account("bob", &hash, portal_under_test::store::Role::User)
            .unwrap();
        assert_eq!(mode(&dir), 0o700, "data dir");
        if crate::common::engine_url().is_none() {
            for f in ["portal.sqlite3", "portal.sqlite3-wal", "portal.sqlite3-shm"] {
                let path = dir.join(f);
                if path.exists() || f == "portal.sqlite3" {
                    assert_eq!(mode(&path), 0o600, "{f}");
                }
            }
        }
        assert_eq!(mode(&dir.join("portal.key")), 0o600, "portal.key");
    }
    umask(old);
}

/// A sign-in form post from `peer`, on the browser's pre-sign-in session.
async fn sign_in_from(
    p: &Portal,
    site: &str,
    peer: SocketAddr,
    user: &str,
    password: &str,
) -> (StatusCode, String) {
    let (s, _, body) = sign_in_with_headers(p, site, peer, user, password).await;
    (s, body)
}

/// [`sign_in_from`], with the answer's headers.
async fn sign_in_with_headers(
    p: &Portal,
    site: &str,
    peer: SocketAddr,
    user: &str,
    password: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut b = p.browser();
    let page = b.get(&format!("/{site}/login")).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = format!(
        "username={}&password={}&csrf_token={}",
        crate::common::urlencode(user),
        crate::common::urlencode(password),
        b.csrf.clone().unwrap()
    );
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/{site}/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, b.cookie.clone().unwrap())
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    p.raw(req).await
}

/// A throttled sign-in says how long to wait, on the page and in `Retry-After`, and after
/// that long the right password gets in (API.md §6, "Sign-in throttling").
#[tokio::test]
async fn a_throttled_sign_in_says_how_long_to_wait() {
    let p = Portal::with_manual_clock();
    p.create_account(ALICE, "user").await;
    let peer: SocketAddr = "10.2.0.1:5000".parse().unwrap();
    // Eight counted wrong passwords (5 free, then 1 s, 2 s, 4 s, ... after the last one);
    // a refused attempt is waited out, so that the next wrong one counts.
    let mut counted = 0;
    while counted < 8 {
        let (s, body) = sign_in_from(&p, "SelfService", peer, ALICE, "wrong password").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            p.advance(Duration::from_secs(300));
            continue;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        counted += 1;
    }
    let (s, headers, body) = sign_in_with_headers(&p, "SelfService", peer, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        wait, 8,
        "Retry-After after 8 failures (5 free, then doubling from 1 s)"
    );
    assert!(
        body.contains(&format!("Wait {wait} seconds")),
        "the page says the same wait: {body}"
    );
    // One second early is still too early; at the wait it is not.
    p.advance(Duration::from_secs(wait - 1));
    let (s, _) = sign_in_from(&p, "SelfService", peer, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    p.advance(Duration::from_secs(1));
    let (s, body) = sign_in_from(&p, "SelfService", peer, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
}

#[tokio::test]
async fn password_sign_in_is_throttled_per_account_with_a_back_off_that_decays() {
    let p = Portal::with_manual_clock();
    p.create_account(ALICE, "user").await;
    let mut refused = 0;
    // 30 wrong passwords in a row, each from another address (only the account's limit
    // applies).
    for i in 0..30u8 {
        let peer: SocketAddr = format!("10.0.{i}.1:5000").parse().unwrap();
        let (s, body) = sign_in_from(&p, "SelfService", peer, ALICE, "wrong password").await;
        match s {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(body.contains("id=\"error\""), "{body}");
            }
            other => panic!("attempt {i}: {other} {body}"),
        }
    }
    assert!(
        refused >= 20,
        "only {refused} of 30 wrong passwords throttled"
    );
    // The right password right away is throttled too (it is not even checked)...
    let peer: SocketAddr = "10.1.0.1:5000".parse().unwrap();
    let (s, _) = sign_in_from(&p, "SelfService", peer, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // ...but never for good: once the back-off has passed, it works.
    p.advance(Duration::from_secs(301));
    let (s, body) = sign_in_from(&p, "SelfService", peer, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    // Other accounts were never slowed.
    p.create_account("bob", "user").await;
    let (s, _) = sign_in_from(&p, "SelfService", peer, "bob", PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    // Each refusal is audited.
    let rows = p.audit("outcome=sign_in_throttled").await;
    assert_eq!(rows.len(), refused + 1, "{rows:?}");
    assert_eq!(rows[0]["requester"], ALICE);
    assert_eq!(rows[0]["source"], "self_service");
}

#[tokio::test]
async fn password_sign_in_is_throttled_per_source_address() {
    let p = Portal::with_manual_clock();
    p.create_account(ALICE, "user").await;
    let attacker: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    // Spraying: one wrong password each for many accounts from one address.
    let mut refused = 0;
    for i in 0..40 {
        let (s, _) =
            sign_in_from(&p, "HelpDesk", attacker, &format!("user{i}"), "Winter2026!").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(
        refused >= 10,
        "only {refused} of 40 sprayed attempts throttled"
    );
    // Alice, from her own address, is not affected.
    let alice: SocketAddr = "198.51.100.9:4000".parse().unwrap();
    let (s, _) = sign_in_from(&p, "SelfService", alice, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    // The attacker's address gets through again once the back-off has passed.
    let (s, _) = sign_in_from(&p, "SelfService", attacker, "user0", "x-wrong-x").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    p.advance(Duration::from_secs(301));
    let (s, _) = sign_in_from(&p, "SelfService", attacker, ALICE, PASSWORD).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
}

/// `openssl s_client` offering only `version` (with every cipher allowed): its exit status
/// and output.
fn s_client(addr: SocketAddr, version: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl (Debian package openssl) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn tls_refuses_1_0_and_1_1_with_a_protocol_version_alert_and_sends_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, stop, server) = tls_portal(dir.path()).await;
    let addr = ready.addr;
    for old in ["-tls1", "-tls1_1"] {
        let (ok, out) = tokio::task::spawn_blocking(move || s_client(addr, old))
            .await
            .unwrap();
        assert!(!ok, "{old} connected:\n{out}");
        // The server's fatal protocol_version alert (70), before any certificate or cipher.
        assert!(
            out.contains("alert protocol version"),
            "{old}: no protocol-version alert:\n{out}"
        );
        assert!(
            out.contains("Cipher is (NONE)"),
            "{old}: a cipher was chosen:\n{out}"
        );
        assert!(
            out.contains("no peer certificate available"),
            "{old}:\n{out}"
        );
    }
    // The control: TLS 1.2 connects with the same client.
    let (ok, out) = tokio::task::spawn_blocking(move || s_client(addr, "-tls1_2"))
        .await
        .unwrap();
    assert!(ok, "TLS 1.2 failed:\n{out}");
    assert!(out.contains("TLSv1.2"), "{out}");
    // HSTS on HTML pages under TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(ready.ca_cert.clone().unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("{}/SelfService/login", ready.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hsts = r
        .headers()
        .get("strict-transport-security")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(hsts.starts_with("max-age="), "HSTS {hsts:?}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_portal-under-test");

#[tokio::test]
async fn no_recovery_password_or_lockout_authorization_in_the_portals_log() {
    // The real binary at the most verbose log level, its stderr in a file; every path that
    // handles a secret: escrow (one and bulk), TPM lockout escrow, help desk disclosure over
    // JSON and HTML (key and Manage TPM), a refused escrow.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = crate::common::engine_url();
    let db_args: Vec<&str> = db
        .iter()
        .flat_map(|u| ["--database-url", u.as_str()])
        .collect();
    let out = Command::new(BIN)
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(&data)
        .args(&db_args)
        .output()
        .unwrap();
    assert!(out.status.success());
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}"#,
    )
    .unwrap();
    let log_path = dir.path().join("portal.log");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .args(&db_args)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child, "serve");
    let url = ready["url"].as_str().unwrap().to_string();
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |path: &str, token: &str, body: Value| {
        c.post(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = post(
        "/api/admin/accounts",
        &admin,
        json!({"username": "hd", "password": PASSWORD, "role": "advanced_helpdesk"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let hd: Value = post("/api/admin/accounts/hd/api-tokens", &admin, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hd = hd["token"].as_str().unwrap().to_string();
    let enr: Value = post("/api/admin/enrollment-tokens", &admin, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dev: Value = post(
        "/api/agent/enroll",
        "",
        json!({"enrollment_token": enr["token"], "device_name": "PC-LOG"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let cred = dev["credential"].as_str().unwrap().to_string();
    let one = Key::random();
    let bulk = Key::random();
    assert_eq!(
        post("/api/agent/keys", &cred, one.json())
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post(
            "/api/agent/keys/bulk",
            &cred,
            json!({"keys": [bulk.json()]})
        )
        .await
        .unwrap()
        .status(),
        200
    );
    // A conflicting escrow (same key ID, another password) is refused: its password is
    // not logged either.
    let mut other = one.clone();
    other.password = Key::random().password;
    assert_eq!(
        post("/api/agent/keys", &cred, other.json())
            .await
            .unwrap()
            .status(),
        409
    );
    let lockout = "5ec2e7a11f0c0ffee0ddba11deadbeef";
    assert_eq!(
        post(
            "/api/agent/tpm-lockout",
            &cred,
            json!({"lockout_auth": lockout})
        )
        .await
        .unwrap()
        .status(),
        204
    );
    for k in [&one, &bulk] {
        let r = post(
            "/api/helpdesk/lookup",
            &hd,
            json!({"key_id": k.guid(), "reason": "Lost PIN"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains(&k.password));
    }
    // The HTML help desk: Manage TPM shows the lockout authorization.
    let page = c
        .get(format!("{url}/HelpDesk/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::common::csrf_of(&page).unwrap();
    let r = c
        .post(format!("{url}/HelpDesk/login"))
        .form(&[
            ("username", "hd"),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = c
        .get(format!("{url}/HelpDesk/tpm"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::common::csrf_of(&page).unwrap();
    let shown = c
        .post(format!("{url}/HelpDesk/tpm"))
        .form(&[
            ("computer", "PC-LOG"),
            ("end_user", ""),
            ("reason", "TPM Reset"),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.to_lowercase().contains(lockout), "{shown}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The log is really at trace level and saw these requests.
    assert!(
        log.contains("/api/helpdesk/lookup"),
        "log too quiet:\n{log}"
    );
    let lower = log.to_lowercase();
    for (what, secret) in [
        ("lockout authorization", lockout.to_string()),
        ("escrowed recovery password", one.password.clone()),
        ("bulk recovery password", bulk.password.clone()),
        ("refused recovery password", other.password.clone()),
    ] {
        assert!(!lower.contains(&secret), "{what} in the portal's log");
        // Nor its digits without the hyphens.
        assert!(
            !lower.contains(&secret.replace('-', "")),
            "{what} (digits) in the portal's log"
        );
    }
}

#[tokio::test]
async fn an_unknown_api_path_answers_404_with_the_json_error_shape() {
    let p = Portal::new();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/agent/nope")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = p.raw(req).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body {body:?} is not JSON: {e}"));
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    assert!(v["error"]["field"].is_null());
    assert_eq!(header_of(&h, "cache-control"), "no-store");
}
