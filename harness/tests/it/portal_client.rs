//! The black-box portal client against the REAL portal binary, started as the harness
//! starts it by default. Build it first: `cargo build -p portal-under-test`.

use std::path::Path;
use std::time::Duration;

use portal_client::{
    AccountRole, Admin, Agent, AuditQuery, BrowserUser, EmbeddedOptions, EmbeddedPortal, EscrowKey,
    HelpDeskOperator, Outcome, PortalError, SettingsPatch, SignIn,
};

use crate::common::{portal_bin, process_state};

const PASSWORD: &str = "correct horse battery";

async fn start() -> EmbeddedPortal {
    EmbeddedPortal::start(&portal_bin())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A valid 48-digit recovery password: every block is 11 * k with k < 65536.
fn recovery_password(seed: u32) -> String {
    (0..8u32)
        .map(|i| {
            format!(
                "{:06}",
                (seed.wrapping_mul(31).wrapping_add(i * 7919) % 65536) * 11
            )
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A key ID `{GUID}`, upper case; with `prefix`, its first 8 digits.
fn key_id(prefix: Option<&str>) -> String {
    let mut id = uuid::Uuid::new_v4().to_string().to_uppercase();
    if let Some(p) = prefix {
        id.replace_range(0..8, p);
    }
    format!("{{{id}}}")
}

fn first8(key_id: &str) -> String {
    key_id[1..9].to_string()
}

/// A device enrolled with one escrowed key, and users with the given sign-ins.
struct Fixture {
    portal: EmbeddedPortal,
    admin: Admin,
    agent: Agent,
    key: EscrowKey,
}

async fn fixture(users: &[(&str, AccountRole, &[SignIn])]) -> Fixture {
    let portal = start().await;
    let admin = Admin::new(portal.target()).unwrap();
    for (name, role, _) in users {
        admin.create_account(name, PASSWORD, *role).await.unwrap();
    }
    let token = admin.create_enrollment_token().await.unwrap();
    let agent = Agent::enroll(portal.target(), &token, "PC-0001")
        .await
        .unwrap();
    let key = EscrowKey::recovery_password(
        &uuid::Uuid::new_v4().to_string(),
        &key_id(None),
        &recovery_password(7),
    );
    let escrowed = agent.escrow_key(&key).await.unwrap();
    assert!(escrowed.created);
    assert_eq!(escrowed.key_protector_id, key.key_protector_id);
    for (name, _, sign_ins) in users {
        for kind in *sign_ins {
            agent.report_sign_in(name, *kind).await.unwrap();
        }
    }
    Fixture {
        portal,
        admin,
        agent,
        key,
    }
}

async fn self_service(portal: &EmbeddedPortal, user: &str) -> BrowserUser {
    let mut browser = BrowserUser::new(portal.target(), user).unwrap();
    browser.sign_in_and_accept(user, PASSWORD).await.unwrap();
    browser
}

fn process_exists(pid: u32) -> bool {
    process_state(pid).is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_portal_starts_over_tls_and_leaves_nothing_behind() {
    let portal = start().await;
    let pid = portal.pid();
    let data_dir = portal.data_dir();
    let target = portal.target().clone();
    assert_eq!(target.url.scheme(), "https");
    assert!(target.ca_cert.as_deref().is_some_and(Path::is_file));
    assert!(process_exists(pid));
    // The admin token works and the settings have their documented defaults.
    let settings = Admin::new(&target).unwrap().settings().await.unwrap();
    assert_eq!(settings.idle_timeout_secs, 300);
    assert_eq!(settings.warning_secs, 60);
    drop(portal);
    assert!(
        !process_exists(pid),
        "the portal (pid {pid}) outlived its handle"
    );
    assert!(!data_dir.exists(), "the throw-away data dir is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_that_dies_at_start_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-portal");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = admin ]; then echo token-123; exit 0; fi\n\
         echo 'cannot open the store: disk on fire' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let options = EmbeddedOptions {
        ready_timeout: Duration::from_secs(5),
        ..EmbeddedOptions::default()
    };
    let err = EmbeddedPortal::start_with(&fake, &options)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PortalError::Start { .. }), "{text}");
    assert!(text.contains("PORTAL-READY"), "{text}");
    assert!(text.contains("disk on fire"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");

    let missing = EmbeddedPortal::start(&dir.path().join("nope"))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("admin bootstrap"), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_creates_accounts_tokens_and_settings() {
    let portal = start().await;
    let admin = Admin::new(portal.target()).unwrap();
    for (name, role) in [
        ("CONTOSO\\alice", AccountRole::User),
        ("CONTOSO\\hd-carol", AccountRole::Helpdesk),
        ("CONTOSO\\hd-frank", AccountRole::AdvancedHelpdesk),
    ] {
        admin.create_account(name, PASSWORD, role).await.unwrap();
    }
    // Names are case-insensitive: a duplicate is a 409 the error names.
    let dup = admin
        .create_account("contoso\\ALICE", PASSWORD, AccountRole::User)
        .await
        .unwrap_err();
    assert_eq!(dup.status(), Some(409), "{dup}");
    assert!(
        dup.to_string().contains("admin: POST /api/admin/accounts"),
        "{dup}"
    );

    let updated = admin
        .update_settings(&SettingsPatch {
            idle_timeout_secs: Some(120),
            helpdesk_text: Some("Call 555-0100.".to_string()),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    assert_eq!(updated.idle_timeout_secs, 120);
    assert_eq!(admin.settings().await.unwrap(), updated);

    // A help desk account's API token is not an admin token.
    let hd_token = admin.create_api_token("CONTOSO\\hd-carol").await.unwrap();
    let not_admin = Admin::with_token(portal.target(), &hd_token).unwrap();
    assert_eq!(not_admin.settings().await.unwrap_err().status(), Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn locally_signed_in_user_gets_the_escrowed_key_once() {
    let f = fixture(&[("CONTOSO\\alice", AccountRole::User, &[SignIn::Local])]).await;
    let mut alice = self_service(&f.portal, "CONTOSO\\alice").await;
    // The key page carries the idle warning with the configured countdown.
    let warning = alice.idle_warning().unwrap();
    assert!(warning.hidden);
    assert_eq!(warning.countdown_secs, Some(60));
    assert!(warning.has_continue);

    let answer = alice
        .request_key(&first8(&f.key.key_protector_id), "BIOS/TPM changed")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.outcome,
        Outcome::KeyShown(f.key.recovery_password.clone())
    );

    let audit = f.admin.audit(&AuditQuery::default()).await.unwrap();
    let row = audit.last().unwrap();
    assert_eq!(
        (row.source.as_str(), row.outcome.as_str()),
        ("self_service", "shown")
    );
    assert_eq!(row.key_id.as_deref(), Some(f.key.key_protector_id.as_str()));
    assert_eq!(row.reason.as_deref(), Some("BIOS/TPM changed"));

    // Single use: the agent is told to rotate; once it has, the old key is not offered.
    let check_in = f.agent.check_in().await.unwrap();
    assert_eq!(check_in.rotate_keys, vec![f.key.key_protector_id.clone()]);
    let new_key =
        EscrowKey::recovery_password(&f.key.volume_id, &key_id(None), &recovery_password(8));
    f.agent.escrow_key(&new_key).await.unwrap();
    let rotation = f
        .agent
        .confirm_rotation(&f.key.key_protector_id, &new_key.key_protector_id)
        .await
        .unwrap();
    assert_eq!(rotation.superseded, f.key.key_protector_id);
    assert!(f.agent.check_in().await.unwrap().rotate_keys.is_empty());
    let old = alice
        .request_key(&f.key.key_protector_id, "BIOS/TPM changed")
        .await
        .unwrap();
    assert!(
        matches!(old.outcome, Outcome::NotFound(_)),
        "{:?}",
        old.outcome
    );
    let new = alice
        .request_key(&new_key.key_protector_id, "BIOS/TPM changed")
        .await
        .unwrap();
    assert_eq!(
        new.outcome,
        Outcome::KeyShown(new_key.recovery_password.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_only_user_is_sent_to_the_help_desk() {
    let f = fixture(&[("CONTOSO\\dave", AccountRole::User, &[SignIn::Remote])]).await;
    f.admin
        .update_settings(&SettingsPatch {
            helpdesk_text: Some("Call 555-0100.".to_string()),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    let mut dave = self_service(&f.portal, "CONTOSO\\dave").await;
    let answer = dave
        .request_key(&first8(&f.key.key_protector_id), "OS filed modified")
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    match &answer.outcome {
        Outcome::HelpDeskMessage(text) => assert!(text.contains("Call 555-0100."), "{text}"),
        other => panic!("expected the help desk message, got {other:?}"),
    }
    assert!(!answer.body.contains(&f.key.recovery_password));
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_and_absent_key_ids_get_identical_answers() {
    let f = fixture(&[
        ("CONTOSO\\alice", AccountRole::User, &[SignIn::Local]),
        ("CONTOSO\\mallory", AccountRole::User, &[]),
    ])
    .await;
    let mut mallory = self_service(&f.portal, "CONTOSO\\mallory").await;
    let foreign = first8(&f.key.key_protector_id);
    let absent = if foreign == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    let a = mallory
        .request_key(&foreign, "BIOS/TPM changed")
        .await
        .unwrap();
    let b = mallory
        .request_key(absent, "BIOS/TPM changed")
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    assert!(matches!(a.outcome, Outcome::NotFound(_)), "{:?}", a.outcome);
    assert_eq!(a.status, b.status);
    // The form echoes the typed key ID back into its input; apart from that one value the
    // two pages must be the same bytes.
    assert_eq!(
        a.body.replace(&foreign, "TYPED"),
        b.body.replace(absent, "TYPED")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn help_desk_roles_and_several_matches() {
    let f = fixture(&[
        ("CONTOSO\\erin", AccountRole::User, &[SignIn::Remote]),
        ("CONTOSO\\hd-carol", AccountRole::Helpdesk, &[]),
        ("CONTOSO\\hd-frank", AccountRole::AdvancedHelpdesk, &[]),
    ])
    .await;
    let key_id = &f.key.key_protector_id;
    let mut carol = HelpDeskOperator::new(f.portal.target(), "CONTOSO\\hd-carol").unwrap();
    carol.sign_in("CONTOSO\\hd-carol", PASSWORD).await.unwrap();
    let shown = carol
        .lookup_key(&first8(key_id), Some("CONTOSO\\erin"), "BIOS changed")
        .await
        .unwrap();
    assert_eq!(
        shown.outcome,
        Outcome::KeyShown(f.key.recovery_password.clone())
    );
    // Role helpdesk must name the end user, and only an associated one.
    let no_user = carol
        .lookup_key(key_id, None, "BIOS changed")
        .await
        .unwrap();
    assert!(
        matches!(no_user.outcome, Outcome::Invalid(_)),
        "{:?}",
        no_user.outcome
    );
    let stranger = carol
        .lookup_key(key_id, Some("CONTOSO\\nobody"), "BIOS changed")
        .await
        .unwrap();
    assert!(
        matches!(stranger.outcome, Outcome::NotFound(_)),
        "{:?}",
        stranger.outcome
    );

    // Two more keys sharing their first 8 digits on the same device.
    let shared: Vec<EscrowKey> = (0..2)
        .map(|i| {
            EscrowKey::recovery_password(
                &uuid::Uuid::new_v4().to_string(),
                &key_id_with("5EC0A11D"),
                &recovery_password(100 + i),
            )
        })
        .collect();
    for k in &shared {
        f.agent.escrow_key(k).await.unwrap();
    }
    let mut frank = HelpDeskOperator::new(f.portal.target(), "CONTOSO\\hd-frank").unwrap();
    frank.sign_in("CONTOSO\\hd-frank", PASSWORD).await.unwrap();
    let several = frank
        .lookup_key("5EC0A11D", None, "TPM Reset")
        .await
        .unwrap();
    match &several.outcome {
        Outcome::SeveralMatches(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            let mut expected: Vec<String> =
                shared.iter().map(|k| k.key_protector_id.clone()).collect();
            expected.sort();
            assert_eq!(ids, expected);
        }
        other => panic!("expected several matches, got {other:?}"),
    }
    let picked = frank
        .lookup_key(&shared[1].key_protector_id, None, "TPM Reset")
        .await
        .unwrap();
    assert_eq!(
        picked.outcome,
        Outcome::KeyShown(shared[1].recovery_password.clone())
    );
}

fn key_id_with(prefix: &str) -> String {
    key_id(Some(prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn manage_tpm_shows_the_lockout_auth_and_flags_rotation() {
    let f = fixture(&[
        ("CONTOSO\\alice", AccountRole::User, &[SignIn::Local]),
        ("CONTOSO\\hd-carol", AccountRole::Helpdesk, &[]),
    ])
    .await;
    let lockout_auth = [0x5a_u8; 32];
    f.agent.escrow_tpm_lockout(&lockout_auth).await.unwrap();
    assert!(!f.agent.check_in().await.unwrap().rotate_tpm_lockout);
    let mut carol = HelpDeskOperator::new(f.portal.target(), "CONTOSO\\hd-carol").unwrap();
    carol.sign_in("CONTOSO\\hd-carol", PASSWORD).await.unwrap();
    let answer = carol
        .manage_tpm("PC-0001", Some("CONTOSO\\alice"), "Lost PIN")
        .await
        .unwrap();
    match &answer.outcome {
        Outcome::LockoutAuth(hex) => assert_eq!(hex.to_lowercase(), hex::encode(lockout_auth)),
        other => panic!("expected the lockout authorization, got {other:?}"),
    }
    assert!(f.agent.check_in().await.unwrap().rotate_tpm_lockout);
    f.agent.escrow_tpm_lockout(&[0x11; 32]).await.unwrap();
    assert!(!f.agent.check_in().await.unwrap().rotate_tpm_lockout);
    let unknown = carol
        .manage_tpm("PC-9999", Some("CONTOSO\\alice"), "Lost PIN")
        .await
        .unwrap();
    assert!(
        matches!(unknown.outcome, Outcome::NotFound(_)),
        "{:?}",
        unknown.outcome
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_expires_unless_kept_alive() {
    let f = fixture(&[("CONTOSO\\alice", AccountRole::User, &[SignIn::Local])]).await;
    f.admin
        .update_settings(&SettingsPatch {
            idle_timeout_secs: Some(1),
            warning_secs: Some(1),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    let mut alice = self_service(&f.portal, "CONTOSO\\alice").await;
    assert_eq!(alice.idle_warning().unwrap().countdown_secs, Some(1));
    // "Continue" before the 2 s are up keeps the session.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(alice.keepalive().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(alice.keepalive().await.unwrap());
    // Then nothing for longer than idle + warning: the key request gets the expiry page.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let answer = alice
        .request_key(&first8(&f.key.key_protector_id), "BIOS/TPM changed")
        .await
        .unwrap();
    assert_eq!(answer.outcome, Outcome::Expired);
    assert_eq!(answer.status, 401);
    let rows = f.admin.audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(
        rows.last().map(|r| r.outcome.as_str()),
        Some("expired_session")
    );
    // The same cookie is now just "no session".
    let again = alice.open_key_page().await.unwrap();
    assert_eq!(again.outcome, Outcome::SignedOut);
}
