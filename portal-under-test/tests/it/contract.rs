//! `openapi.json` against the code, both ways: every documented operation is served and every
//! served JSON route is documented; answers the server gives are documented with their
//! status and their fields. (schemathesis, `scripts/schemathesis.sh`, then fuzzes the live
//! portal against the same document.)

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::common::{Key, Portal};

fn openapi() -> Value {
    serde_json::from_str(portal_under_test::OPENAPI_JSON).unwrap()
}

fn documented_operations() -> BTreeSet<(String, String)> {
    let doc = openapi();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn every_served_json_route_is_documented_and_every_documented_one_served() {
    let served: BTreeSet<(String, String)> = portal_under_test::api_routes()
        .into_iter()
        .map(|(p, m)| (m.to_string(), p.to_string()))
        .collect();
    let documented = documented_operations();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served, not in openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in openapi.json, not served: {unserved:?}"
    );
}

#[tokio::test]
async fn the_route_table_is_what_the_router_serves() {
    // Each documented operation reaches a handler (never 404/405), and on each documented
    // path an undocumented method answers 405.
    let p = Portal::new();
    let documented = documented_operations();
    for (method, path) in &documented {
        let uri = path.replace("{username}", "admin");
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let req = Request::builder()
                .method(Method::from_bytes(m.as_bytes()).unwrap())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let (s, _, _) = p.raw(req).await;
            let is_documented = documented.contains(&(m.to_string(), path.clone()));
            if is_documented {
                assert!(
                    s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {uri}: {s}"
                );
            } else {
                assert_eq!(
                    s,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {uri} ({method} documented)"
                );
            }
        }
    }
}

/// The operation's documented response statuses.
fn statuses(method: &str, path: &str) -> BTreeSet<String> {
    let doc = openapi();
    doc["paths"][path][method.to_lowercase()]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} not documented"))
        .keys()
        .cloned()
        .collect()
}

/// Follows a local `$ref`.
fn resolve(v: &Value) -> Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let doc = openapi();
            let mut at = &doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            at.clone()
        }
        None => v.clone(),
    }
}

#[tokio::test]
async fn answers_the_server_gives_are_documented() {
    let p = Portal::new();
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    // Escrow twice: 201 then 200 (created:false).
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let (s, v) = p
            .json(Method::POST, "/api/agent/keys", Some(&c), Some(k.json()))
            .await;
        assert_eq!(s, expected, "{v}");
        assert!(
            statuses("POST", "/api/agent/keys").contains(s.as_str()),
            "POST /api/agent/keys answers {s}, undocumented"
        );
    }
    // The settings object: the schema names exactly the fields the server sends.
    let (s, v) = p
        .json(
            Method::GET,
            "/api/admin/settings",
            Some(&p.admin_token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let sent: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
    let schema = resolve(
        &openapi()["paths"]["/api/admin/settings"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"],
    );
    let named: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(sent, named, "settings fields sent vs documented");
    // PUT refuses extra fields: the schema must say so.
    let put = resolve(
        &openapi()["paths"]["/api/admin/settings"]["put"]["requestBody"]["content"]
            ["application/json"]["schema"],
    );
    assert_eq!(put["additionalProperties"], json!(false), "{put}");
    // 405 is documented with the error shape.
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/api/admin/settings")
        .header(header::AUTHORIZATION, format!("Bearer {}", p.admin_token))
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = p.raw(req).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let codes = &openapi()["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
        ["code"]["enum"];
    assert!(
        codes
            .as_array()
            .unwrap()
            .contains(&json!("method_not_allowed")),
        "{codes}"
    );
}
