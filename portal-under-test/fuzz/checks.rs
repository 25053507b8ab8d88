//! The properties the portal's fuzz targets check, one function a parser of untrusted
//! input. Shared, word for word, by the cargo-fuzz targets (nightly, `fuzz_targets/`) and
//! the stable replay of the committed corpora in `make test`
//! (portal-under-test/tests/it/fuzz_replay.rs includes this file). Each takes any bytes and
//! panics only when a property fails.
#![allow(dead_code)] // each fuzz target uses one function of this file

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use portal_under_test::config::Config;
use portal_under_test::crypto::{token_hash, Argon2Config, Sealer};
use portal_under_test::import::parse_jsonl;
use portal_under_test::keyid::{
    check_recovery_password, parse_guid, parse_key_id_input, KeyIdInput,
};
use portal_under_test::store::Role;
use portal_under_test::{app, AppState};
use tower::ServiceExt;

/// Key-ID input (help desk and self-service forms, the lookup API) and the GUID and
/// recovery-password rules of escrow and import: any text is accepted or refused; a full
/// key ID is the GUID `parse_guid` reads from the same text.
pub fn key_id_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = parse_key_id_input(text);
    let guid = parse_guid(text);
    if let Ok(KeyIdInput::Full(v)) = input {
        if text.trim().len() <= 64 {
            assert_eq!(
                guid,
                Ok(v),
                "{text:?}: key-ID input and GUID rules disagree"
            );
        }
    }
    if let Ok(pw) = check_recovery_password(text) {
        assert!(
            text.contains(pw),
            "{text:?}: accepted password {pw:?} is not in the input"
        );
    }
}

/// The bulk import's JSON Lines parser: any text gives one row per non-blank line, or the
/// error of a line that exists.
pub fn import_lines(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sealer = Sealer::from_key(&[7; 32]);
    let lines = text.lines().count();
    match parse_jsonl(text, &sealer) {
        Ok((rows, numbers)) => {
            let non_blank = text.lines().filter(|l| !l.trim().is_empty()).count();
            assert_eq!(rows.len(), non_blank, "one row per non-blank line");
            assert_eq!(numbers.len(), rows.len());
        }
        Err(
            portal_under_test::import::ImportError::Line { line, .. }
            | portal_under_test::import::ImportError::Unreadable { line, .. },
        ) => {
            assert!(
                (1..=lines).contains(&line),
                "error names line {line} of {lines}"
            );
        }
        Err(e) => panic!("a parse-only import failed outside a line: {e}"),
    }
}

/// A portal on a temp-dir SQLite store, built once per process, with one credential of
/// each kind the routes ask for.
struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    router: Router,
    device_credential: String,
    admin_token: String,
    helpdesk_token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let config = Config {
            argon2: Argon2Config {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
            ..Config::default()
        };
        let state = AppState::open_data_dir(dir.path(), config)
            .unwrap_or_else(|e| panic!("portal state: {e}"));
        let hash = state
            .hasher
            .hash("correct horse battery")
            .unwrap_or_else(|e| panic!("hash: {e}"));
        let token_for = |name: &str, role: Role| {
            let account = state
                .store
                .create_account(name, &hash, role)
                .unwrap_or_else(|e| panic!("account: {e}"));
            let token = format!("api-fuzz-{name}");
            state
                .store
                .add_api_token(account.id, &token_hash(&token))
                .unwrap_or_else(|e| panic!("token: {e}"));
            token
        };
        let admin_token = token_for("admin", Role::Admin);
        let helpdesk_token = token_for("helpdesk", Role::AdvancedHelpdesk);
        let device_credential = "dev-fuzz-device".to_string();
        state
            .store
            .enroll_device("FUZZ-PC", &token_hash(&device_credential))
            .unwrap_or_else(|e| panic!("device: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        Fixture {
            _dir: dir,
            runtime,
            router: app(state),
            device_credential,
            admin_token,
            helpdesk_token,
        }
    })
}

/// Who a route expects.
#[derive(Clone, Copy)]
enum Caller {
    Nobody,
    Device,
    Admin,
    Helpdesk,
}

/// The routes that read a body: the JSON API and the forms.
const ROUTES: &[(Method, &str, Caller)] = &[
    (Method::POST, "/api/agent/enroll", Caller::Nobody),
    (Method::POST, "/api/agent/keys", Caller::Device),
    (Method::POST, "/api/agent/keys/bulk", Caller::Device),
    (Method::POST, "/api/agent/sign-ins", Caller::Device),
    (Method::POST, "/api/agent/check-in", Caller::Device),
    (Method::POST, "/api/agent/rotations", Caller::Device),
    (Method::POST, "/api/agent/tpm-lockout", Caller::Device),
    (
        Method::POST,
        "/api/agent/tpm-lockout/rotated",
        Caller::Device,
    ),
    (Method::POST, "/api/admin/accounts", Caller::Admin),
    (
        Method::POST,
        "/api/admin/accounts/helpdesk/api-tokens",
        Caller::Admin,
    ),
    (Method::POST, "/api/admin/enrollment-tokens", Caller::Admin),
    (Method::PUT, "/api/admin/settings", Caller::Admin),
    (Method::POST, "/api/helpdesk/lookup", Caller::Helpdesk),
    (Method::POST, "/HelpDesk/login", Caller::Nobody),
    (Method::POST, "/SelfService/login", Caller::Nobody),
    (Method::POST, "/Admin/login", Caller::Nobody),
    (Method::POST, "/HelpDesk/key", Caller::Nobody),
    (Method::POST, "/SelfService/key", Caller::Nobody),
    (Method::POST, "/Admin/settings", Caller::Nobody),
];

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    None,
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=x"),
];

/// The portal's JSON and form bodies through the real router (extractors, deserialisers,
/// validation, handlers): byte 0 picks the route, byte 1 the content type and whether the
/// right credential is sent, the rest is the body. No answer is a 500, and every error
/// under `/api/` has the JSON error shape.
pub fn http_bodies(data: &[u8]) {
    let [route, flags, body @ ..] = data else {
        return;
    };
    let (method, path, caller) = &ROUTES[usize::from(*route) % ROUTES.len()];
    let content_type = CONTENT_TYPES[usize::from(flags & 0x7f) % CONTENT_TYPES.len()];
    let f = fixture();
    let mut req = Request::builder().method(method.clone()).uri(*path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if flags & 0x80 == 0 {
        let credential = match caller {
            Caller::Nobody => None,
            Caller::Device => Some(&f.device_credential),
            Caller::Admin => Some(&f.admin_token),
            Caller::Helpdesk => Some(&f.helpdesk_token),
        };
        if let Some(c) = credential {
            req = req.header(header::AUTHORIZATION, format!("Bearer {c}"));
        }
    }
    let req = req
        .body(Body::from(body.to_vec()))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let (status, content_type, bytes) = f.runtime.block_on(async {
        let resp = f
            .router
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("body: {e}"));
        (status, ct, bytes)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path}: 500: {}",
        String::from_utf8_lossy(&bytes)
    );
    if path.starts_with("/api/") && (status.is_client_error() || status.is_server_error()) {
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path}: {status} as {content_type:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON: {e}"));
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{method} {path}: {status} without the error shape: {v}"
        );
    }
}
