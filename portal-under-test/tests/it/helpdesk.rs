use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Key, Portal};

const ALICE: &str = "CONTOSO\\alice";
const BOB: &str = "CONTOSO\\bob";

async fn setup() -> (Portal, String, Key) {
    let p = Portal::new();
    p.create_account("CONTOSO\\hd1", "helpdesk").await;
    p.create_account("CONTOSO\\hd2", "advanced_helpdesk").await;
    p.create_account(ALICE, "user").await;
    let c = p.enroll("PC-0042").await;
    let k = Key::random();
    p.escrow(&c, &k).await;
    // A remote sign-in is enough for the help desk.
    p.sign_in(&c, ALICE, "remote").await;
    (p, c, k)
}

#[tokio::test]
async fn helpdesk_role_needs_the_right_end_user() {
    let (p, _c, k) = setup().await;
    let mut b = p.browser();
    let login = b.login("HelpDesk", "CONTOSO\\hd1").await;
    assert_eq!(login.location.as_deref(), Some("/HelpDesk"));
    let form = b.get("/HelpDesk").await;
    for id in ["end-user", "key-id", "reason", "get-key"] {
        assert!(form.has(id), "{id}");
    }
    assert!(form
        .body
        .contains("value=\"Operating System Boot Order changed\""));

    let no_user = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k.prefix8()),
                ("end_user", ""),
                ("reason", "Lost PIN"),
            ],
        )
        .await;
    assert_eq!(no_user.status, StatusCode::BAD_REQUEST);
    assert!(no_user.text_of("error").unwrap().contains("end_user"));

    let wrong = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k.prefix8()),
                ("end_user", BOB),
                ("reason", "Lost PIN"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    assert!(!wrong.body.contains(&k.password));

    let right = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k.prefix8()),
                ("end_user", "contoso\\ALICE"),
                ("reason", "Lost PIN"),
            ],
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(
        right.text_of("recovery-password").as_deref(),
        Some(k.password.as_str())
    );

    let rows = p.audit("source=help_desk").await;
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["denied", "shown"]);
    assert_eq!(rows[1]["requester"], "CONTOSO\\hd1");
    assert_eq!(rows[1]["end_user"], "contoso\\ALICE");
    assert_eq!(rows[1]["device"], "PC-0042");
    assert_eq!(rows[1]["reason"], "Lost PIN");
}

#[tokio::test]
async fn advanced_helpdesk_needs_only_the_key_id() {
    let (p, _c, k) = setup().await;
    let mut b = p.browser();
    b.login("HelpDesk", "CONTOSO\\hd2").await;
    b.get("/HelpDesk").await;
    let page = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k.guid()),
                ("end_user", ""),
                ("reason", "TPM Reset"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k.password.as_str())
    );
}

#[tokio::test]
async fn eight_digits_list_matches_and_32_pick_one() {
    let p = Portal::new();
    p.create_account("CONTOSO\\hd2", "advanced_helpdesk").await;
    let k1 = Key::with_prefix(0x0BADCAFE);
    let k2 = Key::with_prefix(0x0BADCAFE);
    for (name, k, u) in [("PC-1", &k1, ALICE), ("PC-2", &k2, BOB)] {
        let c = p.enroll(name).await;
        p.escrow(&c, k).await;
        p.sign_in(&c, u, "local").await;
    }
    let mut b = p.browser();
    b.login("HelpDesk", "CONTOSO\\hd2").await;
    b.get("/HelpDesk").await;
    let page = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", "0badcafe"),
                ("end_user", ""),
                ("reason", "Other"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.has("matches"));
    for s in [
        k1.guid(),
        k2.guid(),
        "PC-1".into(),
        "PC-2".into(),
        "CONTOSO\\alice".into(),
        "CONTOSO\\bob".into(),
    ] {
        assert!(page.body.contains(&s), "lists {s}");
    }
    assert!(!page.has("recovery-password"));
    let page = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k2.guid()),
                ("end_user", ""),
                ("reason", "Other"),
            ],
        )
        .await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k2.password.as_str())
    );
}

#[tokio::test]
async fn user_role_may_not_use_the_help_desk() {
    let (p, _c, _k) = setup().await;
    let mut b = p.browser();
    let page = b.login("HelpDesk", ALICE).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let tok = p.api_token(ALICE).await;
    let (s, v) = p
        .json(
            Method::POST,
            "/api/helpdesk/lookup",
            Some(&tok),
            Some(json!({"key_id": "12345678", "reason": "Other"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["error"]["code"], "forbidden");
}

#[tokio::test]
async fn json_lookup_follows_the_same_rules() {
    let (p, _c, k) = setup().await;
    let hd = p.api_token("CONTOSO\\hd1").await;
    let lookup = |body: serde_json::Value| {
        let p = &p;
        let hd = hd.clone();
        async move {
            p.json(Method::POST, "/api/helpdesk/lookup", Some(&hd), Some(body))
                .await
        }
    };
    let (s, v) = lookup(json!({"key_id": k.prefix8(), "reason": "Lost PIN"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "user");
    let (s, v) = lookup(json!({"key_id": k.prefix8(), "user": BOB, "reason": "Lost PIN"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    let (s, v) = lookup(json!({"key_id": "xyz", "user": ALICE, "reason": "Lost PIN"})).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("key_id"))
    );
    let (s, v) =
        lookup(json!({"key_id": k.prefix8(), "user": ALICE, "reason": "BIOS/TPM changed"})).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("reason"))
    );
    let (s, v) = lookup(json!({"key_id": k.prefix8(), "user": ALICE, "reason": "Lost PIN"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "shown");
    assert_eq!(v["recovery_password"], k.password);
    assert_eq!(v["device"], "PC-0042");
    let rows = p.audit("source=api").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["outcome"], "shown");
}

#[tokio::test]
async fn manage_tpm_shows_lockout_auth_once_and_asks_for_rotation() {
    let (p, c, _k) = setup().await;
    let (s, _) = p
        .json(
            Method::POST,
            "/api/agent/tpm-lockout",
            Some(&c),
            Some(json!({"lockout_auth": "00112233aabbccdd"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(p.check_in(&c).await["rotate_tpm_lockout"], false);

    let mut b = p.browser();
    b.login("HelpDesk", "CONTOSO\\hd1").await;
    let form = b.get("/HelpDesk/tpm").await;
    assert!(form.has("computer") && form.has("end-user") && form.has("reason"));
    let wrong = b
        .post(
            "/HelpDesk/tpm",
            &[
                ("computer", "PC-0042"),
                ("end_user", BOB),
                ("reason", "TPM Reset"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    assert!(!wrong.has("lockout-auth"));
    let page = b
        .post(
            "/HelpDesk/tpm",
            &[
                ("computer", "pc-0042"),
                ("end_user", ALICE),
                ("reason", "TPM Reset"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.text_of("lockout-auth").as_deref(),
        Some("00112233aabbccdd")
    );
    assert_eq!(p.check_in(&c).await["rotate_tpm_lockout"], true);
    let (s, _) = p
        .json(
            Method::POST,
            "/api/agent/tpm-lockout/rotated",
            Some(&c),
            Some(json!({"lockout_auth": "ffee"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(p.check_in(&c).await["rotate_tpm_lockout"], false);
    let page = b
        .post(
            "/HelpDesk/tpm",
            &[
                ("computer", "PC-0042"),
                ("end_user", ALICE),
                ("reason", "TPM Reset"),
            ],
        )
        .await;
    assert_eq!(page.text_of("lockout-auth").as_deref(), Some("ffee"));
    let rows = p.audit("device=PC-0042&outcome=shown").await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["key_type"] == "tpm_lockout"));
    let all = serde_json::to_string(&p.audit("").await).unwrap();
    assert!(
        !all.contains("00112233aabbccdd") && !all.contains("ffee\""),
        "no secret in the audit"
    );
}

#[tokio::test]
async fn concurrent_json_lookups_each_commit_their_audit_row_and_the_disclosure() {
    let (p, c, k) = setup().await;
    let hd = p.api_token("CONTOSO\\hd2").await;
    p.settings(json!({"lookup_rate_limit_exempt": ["CONTOSO\\hd2"]}))
        .await;
    // Issued tokens work at once (the in-memory token map is updated with the commit);
    // an unknown token is refused.
    let absent = Key::random();
    let asks: Vec<_> = (0..40)
        .map(|i| {
            let key = if i % 2 == 0 {
                k.prefix8()
            } else {
                absent.prefix8()
            };
            p.json(
                Method::POST,
                "/api/helpdesk/lookup",
                Some(&hd),
                Some(json!({"key_id": key, "reason": "Lost PIN"})),
            )
        })
        .collect();
    let answers = futures_join_all(asks).await;
    for (i, (s, v)) in answers.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(*s, StatusCode::OK, "{v}");
            assert_eq!(v["recovery_password"], k.password);
        } else {
            assert_eq!(*s, StatusCode::NOT_FOUND, "{v}");
            assert_eq!(v["error"]["code"], "not_found");
        }
    }
    // Every answer was sent after its audit row committed: all 40 rows are there now.
    let rows = p.audit("source=api").await;
    assert_eq!(rows.len(), 40);
    assert_eq!(rows.iter().filter(|r| r["outcome"] == "shown").count(), 20);
    assert_eq!(
        rows.iter().filter(|r| r["outcome"] == "not_found").count(),
        20
    );
    // ... and so was the disclosure mark: the device is told to rotate the key.
    let v = p.check_in(&c).await;
    assert_eq!(v["rotate_keys"], json!([k.guid()]));
    let (s, _) = p
        .json(
            Method::POST,
            "/api/helpdesk/lookup",
            Some("api_0000000000000000000000000000000000000000000000000000000000000000"),
            Some(json!({"key_id": k.prefix8(), "reason": "Lost PIN"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Tokens survive a restart (the map is loaded from the store).
    let p = p.restart();
    let (s, v) = p
        .json(
            Method::POST,
            "/api/helpdesk/lookup",
            Some(&hd),
            Some(json!({"key_id": k.prefix8(), "reason": "Lost PIN"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(p.audit("source=api").await.len(), 41);
}

/// Polls every future to completion concurrently (no extra dependency for a test).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in set.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn a_token_written_by_another_process_is_honoured_at_once() {
    use portal_under_test::crypto::{random_token, token_hash};
    let (p, _c, k) = setup().await;
    // As `admin bootstrap` does next to a running portal: its own connection to the store.
    let other = portal_under_test::store::open(p.database_url.as_deref(), p.dir.path()).unwrap();
    let hd2 = other.account_by_name("CONTOSO\\hd2").unwrap().unwrap();
    let token = random_token("api");
    other.add_api_token(hd2.id, &token_hash(&token)).unwrap();
    let ask = |t: String| {
        let p = &p;
        let key = k.prefix8();
        async move {
            p.json(
                Method::POST,
                "/api/helpdesk/lookup",
                Some(&t),
                Some(json!({"key_id": key, "reason": "Lost PIN"})),
            )
            .await
        }
    };
    let (s, v) = ask(token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["recovery_password"], k.password);
    let (s, _) = ask(random_token("api")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// The HTML help desk and the JSON API validate a key lookup with one function: the same
/// status and the same message for each bad field (the end user's field is `end_user` on
/// the form, `user` in JSON), and neither audits nor discloses anything for a bad request.
#[tokio::test]
async fn html_and_json_help_desk_validate_alike() {
    let (p, c, k) = setup().await;
    let hd = p.api_token("CONTOSO\\hd1").await;
    let mut b = p.browser();
    b.login("HelpDesk", "CONTOSO\\hd1").await;
    b.get("/HelpDesk").await;
    let long_user = "x".repeat(257);
    let prefix = k.prefix8();
    let cases: [(&str, &str, &str, &str); 6] = [
        ("xyz", ALICE, "Lost PIN", "key_id"),
        ("", ALICE, "Lost PIN", "key_id"),
        (&prefix, "", "Lost PIN", "user"),
        (&prefix, &long_user, "Lost PIN", "user"),
        (&prefix, ALICE, "BIOS/TPM changed", "reason"),
        (&prefix, ALICE, "", "reason"),
    ];
    for (key_id, user, reason, field) in cases {
        let (s, v) = p
            .json(
                Method::POST,
                "/api/helpdesk/lookup",
                Some(&hd),
                Some(json!({"key_id": key_id, "user": user, "reason": reason})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        let page = b
            .post(
                "/HelpDesk/key",
                &[("key_id", key_id), ("end_user", user), ("reason", reason)],
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{field}");
        // The message starts with the field's name on its surface.
        let on_the_form = match message.strip_prefix("user ") {
            Some(rest) => format!("end_user {rest}"),
            None => message.to_string(),
        };
        assert!(message.starts_with(field), "{message}");
        assert_eq!(
            page.text_of("error").unwrap(),
            on_the_form,
            "the form says what the API says"
        );
    }
    assert!(
        p.audit("").await.is_empty(),
        "validation failures are not audited"
    );
    assert_eq!(p.check_in(&c).await["rotate_keys"], json!([]));

    // A good request: both surfaces answer it, each audited under its source.
    let page = b
        .post(
            "/HelpDesk/key",
            &[
                ("key_id", &k.prefix8()),
                ("end_user", ALICE),
                ("reason", "Lost PIN"),
            ],
        )
        .await;
    assert_eq!(
        page.text_of("recovery-password").as_deref(),
        Some(k.password.as_str())
    );
    let (s, v) = p
        .json(
            Method::POST,
            "/api/helpdesk/lookup",
            Some(&hd),
            Some(json!({"key_id": k.prefix8(), "user": ALICE, "reason": " Lost PIN "})),
        )
        .await;
    assert_eq!(
        (s, &v["recovery_password"]),
        (StatusCode::OK, &json!(k.password))
    );
    let sources: Vec<String> = p
        .audit("outcome=shown")
        .await
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources, ["help_desk", "api"]);
}
