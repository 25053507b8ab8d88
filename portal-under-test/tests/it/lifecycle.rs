use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Key, Portal};

const ALICE: &str = "CONTOSO\\alice";

#[tokio::test]
async fn shown_key_is_rotated_and_then_never_offered_again() {
    let p = Portal::new();
    p.create_account(ALICE, "user").await;
    p.create_account("CONTOSO\\hd2", "advanced_helpdesk").await;
    let c = p.enroll("PC-1").await;
    let old = Key::random();
    p.escrow(&c, &old).await;
    p.sign_in(&c, ALICE, "local").await;
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([]));

    let mut b = p.browser();
    b.self_service(ALICE).await;
    let page = b.get_key(&old.prefix8(), "Lost PIN/passphrase").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(old.password.as_str())
    );
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([old.guid()]));

    // The new key must be escrowed before the rotation is accepted.
    let new = Key::random();
    let rot = json!({"old_key_protector_id": old.guid(), "new_key_protector_id": new.guid()});
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/rotations",
            Some(&c),
            Some(rot.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["field"], "new_key_protector_id");
    p.escrow(&c, &new).await;
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/rotations",
            Some(&c),
            Some(rot.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["superseded"], old.guid());
    let (s, _) = p
        .json(Method::POST, "/api/agent/rotations", Some(&c), Some(rot))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([]));

    // Superseded: self-service and help desk answer "not found".
    let page = b.get_key(&old.prefix8(), "Lost PIN/passphrase").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains(&old.password));
    let hd = p.api_token("CONTOSO\\hd2").await;
    let (s, _) = p
        .json(
            Method::POST,
            "/api/helpdesk/lookup",
            Some(&hd),
            Some(json!({"key_id": old.guid(), "reason": "Other"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The new key works.
    let page = b.get_key(&new.guid(), "Lost PIN/passphrase").await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(new.password.as_str())
    );

    // After a restart the index is rebuilt without the superseded key.
    drop(b);
    let p = p.restart();
    assert!(p.state.index.lookup_full(old.id).is_none());
    assert!(p.state.index.lookup_full(new.id).is_some());
    // The old record is kept (never deleted).
    let rec = p.state.store.key_by_id(old.id).unwrap().unwrap();
    assert!(rec.superseded);
}

#[tokio::test]
async fn escrow_is_idempotent_and_refuses_a_different_password() {
    let p = Portal::new();
    let c = p.enroll("PC-1").await;
    let k = Key::random();
    p.escrow(&c, &k).await;
    let (s, v) = p
        .json(Method::POST, "/api/agent/keys", Some(&c), Some(k.json()))
        .await;
    assert_eq!((s, &v["created"]), (StatusCode::OK, &json!(false)));
    let mut other = k.json();
    other["recovery_password"] = json!(Key::random().password);
    let (s, v) = p
        .json(Method::POST, "/api/agent/keys", Some(&c), Some(other))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "conflict");
    // Another device may not claim the same key ID.
    let c2 = p.enroll("PC-2").await;
    let (s, _) = p
        .json(Method::POST, "/api/agent/keys", Some(&c2), Some(k.json()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bulk_escrow_is_all_or_nothing() {
    let p = Portal::new();
    let c = p.enroll("PC-1").await;
    let keys: Vec<Key> = (0..50).map(|_| Key::random()).collect();
    let mut body: Vec<_> = keys.iter().map(Key::json).collect();
    body[7]["recovery_password"] = json!("111112-000022-000033-000044-000055-000066-000077-000088");
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/keys/bulk",
            Some(&c),
            Some(json!({"keys": body.clone()})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "keys[7].recovery_password");
    assert!(p.state.index.is_empty());
    body[7] = keys[7].json();
    let (s, v) = p
        .json(
            Method::POST,
            "/api/agent/keys/bulk",
            Some(&c),
            Some(json!({"keys": body})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"created": 50, "existing": 0}));
    assert_eq!(p.state.index.len(), 50);
}

#[tokio::test]
async fn enrollment_token_is_one_time_and_credentials_are_checked() {
    let p = Portal::new();
    let (_, v) = p
        .json(
            Method::POST,
            "/api/admin/enrollment-tokens",
            Some(&p.admin_token),
            None,
        )
        .await;
    let tok = v["token"].as_str().unwrap().to_string();
    let body = json!({"enrollment_token": tok, "device_name": "PC-9"});
    let (s, _) = p
        .json(Method::POST, "/api/agent/enroll", None, Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = p
        .json(Method::POST, "/api/agent/enroll", None, Some(body))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthenticated");
    let (s, _) = p
        .json(Method::POST, "/api/agent/check-in", Some("dev_bogus"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = p
        .json(Method::POST, "/api/agent/check-in", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
