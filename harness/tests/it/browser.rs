//! The self-service flow in a real browser: Debian's headless Chromium over WebDriver
//! (`chromium` + `chromium-driver`, installed by `scripts/install-system-deps.sh`), against
//! the real portal binary. Build it first: `cargo build -p portal-under-test`.

use std::time::Duration;

use portal_client::{
    AccountRole, Admin, ChromeOptions, ChromeUser, EmbeddedOptions, EmbeddedPortal, Outcome,
};

use crate::common::{harness, pids, portal_bin, process_state};

const PASSWORD: &str = "correct horse battery";

fn chrome() -> ChromeOptions {
    ChromeOptions::detect().unwrap_or_else(|e| panic!("{e}"))
}

/// A portal with a short inactivity timeout and one self-service account.
async fn portal(idle_secs: u64, warning_secs: u64) -> (EmbeddedPortal, String) {
    let bin = portal_bin();
    let options = EmbeddedOptions {
        config: Some(serde_json::json!({
            "argon2": { "m_cost_kib": 64, "t_cost": 1, "p_cost": 1 },
            "settings": { "idle_timeout_secs": idle_secs, "warning_secs": warning_secs }
        })),
        ..EmbeddedOptions::default()
    };
    let portal = EmbeddedPortal::start_with(&bin, &options).await.unwrap();
    let user = format!("CONTOSO\\kbd{}", std::process::id());
    Admin::new(portal.target())
        .unwrap()
        .create_account(&user, PASSWORD, AccountRole::User)
        .await
        .unwrap();
    (portal, user)
}

async fn js(user: &ChromeUser, id: &str, attr: &str) -> Option<String> {
    user.attr_of(id, attr).await.unwrap()
}

/// CI's browser run: three self-service scenarios through `harness run --browser` —
/// English, Japanese, and the idle expiry with a counting-down warning — with the
/// screenshots in the HTML report.
#[test]
fn harness_run_browser_plays_self_service_in_both_languages() {
    let out_dir = tempfile::tempdir().unwrap();
    let html = out_dir.path().join("html");
    let json = out_dir.path().join("run.json");
    let output = harness()
        .args(["run", "--browser", "-j", "2"])
        // `name:` is a substring match: keep the real-log variant of this scenario out.
        .args(["--filter", "name:firmware-update-uefi !tag:real-log"])
        .args(["--filter", "name:japanese-user-lost-pin-self-service"])
        .args(["--filter", "name:idle-session-expires-ja"])
        .arg("--html")
        .arg(&html)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "harness run --browser failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 3, "{stdout}");
    let steps = |name: &str| -> Vec<String> {
        scenarios
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in the report"))["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let ja = steps("japanese-user-lost-pin-self-service");
    assert!(ja.contains(&"the pages come in ja".to_string()), "{ja:?}");
    assert!(
        ja.contains(&"the key from the portal unlocks the device".to_string()),
        "{ja:?}"
    );
    let idle = steps("idle-session-expires-ja");
    for step in [
        "the warning appears after 2 idle seconds",
        "the countdown counts down",
        "with no answer the page goes to the expiry page",
        "the server refuses the old session",
    ] {
        assert!(idle.contains(&step.to_string()), "{step} missing: {idle:?}");
    }

    // The screenshots: PNG files next to index.html, each shown in it.
    let index = std::fs::read_to_string(html.join("index.html")).unwrap();
    for file in [
        "japanese-user-lost-pin-self-service-01-notice.png",
        "japanese-user-lost-pin-self-service-02-key.png",
        "idle-session-expires-ja-02-idle-warning.png",
        "idle-session-expires-ja-03-expired.png",
        "firmware-update-uefi-02-key.png",
    ] {
        let png = std::fs::read(html.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{file} is not a PNG");
        assert!(png.len() > 2000, "{file} is suspiciously small");
        assert!(
            index.contains(&format!("src=\"{file}\"")),
            "{file} not shown"
        );
    }
}

/// The warning as a person sees it: hidden at first, shown after the idle time with a
/// countdown that really counts down; "continue" (Enter on the focused button) keeps the
/// session; later, with no answer, the page lands on the expiry page and the server
/// refuses the old session.
#[tokio::test]
async fn idle_warning_counts_down_continue_keeps_the_session_then_it_expires() {
    let (portal, username) = portal(2, 4).await;
    let mut user = ChromeUser::start(portal.target(), &username, &chrome())
        .await
        .unwrap();
    user.sign_in_and_accept(&username, PASSWORD).await.unwrap();
    let fresh = user.idle_warning().await.unwrap().unwrap();
    assert!(fresh.hidden, "{fresh:?}");

    let shown = user
        .wait_for_idle_warning(Duration::from_secs(6))
        .await
        .unwrap();
    let first = shown.countdown_secs.unwrap();
    assert!(first <= 4 && shown.has_continue, "{shown:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = user
        .idle_warning()
        .await
        .unwrap()
        .unwrap()
        .countdown_secs
        .unwrap();
    assert!(later < first, "countdown went from {first} to {later}");

    // Continue, with the keyboard: the warning moved the focus to its button.
    assert_eq!(user.focused_id().await.unwrap(), "idle-continue");
    assert!(user.keepalive().await.unwrap(), "continue kept the session");
    // Past the moment the old countdown would have expired: still on the key form.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page = user.page().await.unwrap();
    assert!(page.url.path().ends_with("/SelfService"), "{}", page.url);
    assert!(page.has("get-key"));
    let cookie = user.session_cookie().await.unwrap().unwrap();

    // Now nobody answers.
    let expired = user
        .wait_for_expiry_page(Duration::from_secs(12))
        .await
        .unwrap();
    assert!(expired.has("expired"), "{}", expired.body);
    assert_eq!(
        user.session_cookie().await.unwrap().as_deref(),
        Some(cookie.as_str())
    );
    user.open("/SelfService").await.unwrap();
    let after = user.page().await.unwrap();
    assert!(
        after.url.path().ends_with("/SelfService/login"),
        "the old session still opens {}",
        after.url
    );
    user.close().await;
}

/// Keyboard only, and what a screen reader is told: every field has a label, the flow
/// goes with Tab/Enter alone (the client fails if the focus is elsewhere), and an error
/// is announced next to its field, which points at it.
#[tokio::test]
async fn keyboard_only_flow_labels_and_errors_next_to_the_field() {
    let (portal, username) = portal(300, 60).await;
    let mut user = ChromeUser::start(portal.target(), &username, &chrome())
        .await
        .unwrap();
    // sign_in_and_accept types into the focused field, Tabs, presses Enter, and checks
    // the focus at each point.
    user.sign_in_and_accept(&username, PASSWORD).await.unwrap();

    let unlabelled = user_js(
        &user,
        "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
           .filter(e => !e.id || !document.querySelector('label[for=\"' + e.id + '\"]'))
           .map(e => e.outerHTML);",
    )
    .await;
    assert_eq!(unlabelled, serde_json::json!([]), "fields without a label");

    // A key ID that is too short: 400, the message right after the key ID field.
    let answer = user.request_key("1234", "BIOS/TPM changed").await.unwrap();
    assert!(
        matches!(answer.outcome, Outcome::Invalid(ref m) if m.contains("key_id")),
        "{:?}",
        answer.outcome
    );
    assert_eq!(js(&user, "error", "role").await.as_deref(), Some("alert"));
    assert_eq!(
        js(&user, "key-id", "aria-invalid").await.as_deref(),
        Some("true")
    );
    let described = js(&user, "key-id", "aria-describedby")
        .await
        .unwrap_or_default();
    assert!(
        described.split_whitespace().any(|id| id == "error"),
        "aria-describedby={described:?}"
    );
    let next = user_js(
        &user,
        "return document.getElementById('key-id').nextElementSibling.id;",
    )
    .await;
    assert_eq!(next, "error", "the message follows its field");
    assert_eq!(user.focused_id().await.unwrap(), "key-id");

    // An ID nobody has: 404, again at the key ID field, and the keyboard still works
    // from there (request_key starts from the focused field).
    let answer = user
        .request_key("0badf00d", "Lost PIN/passphrase")
        .await
        .unwrap();
    assert!(
        matches!(answer.outcome, Outcome::NotFound(_)),
        "{:?}",
        answer.outcome
    );
    assert_eq!(answer.status, 404);
    assert_eq!(
        js(&user, "key-id", "aria-invalid").await.as_deref(),
        Some("true")
    );

    // The language switch: ?lang=ja, then the cookie keeps it.
    user.open("/SelfService?lang=ja").await.unwrap();
    assert_eq!(user.page_language().await.unwrap(), "ja");
    user.open("/SelfService").await.unwrap();
    assert_eq!(user.page_language().await.unwrap(), "ja");
    assert_eq!(
        user.text_of("get-key").await.unwrap().as_deref(),
        Some("キーの取得")
    );
    // The reason values stay the product's English labels; the shown text is Japanese.
    let options = user_js(
        &user,
        "return Array.from(document.getElementById('reason').options).slice(1)
           .map(o => [o.value, o.text]);",
    )
    .await;
    assert_eq!(
        options,
        serde_json::json!([
            ["BIOS/TPM changed", "BIOS/TPM の変更"],
            ["OS filed modified", "OS ファイルの変更"],
            ["Lost PIN/passphrase", "PIN/パスフレーズの紛失"]
        ])
    );
    user.close().await;
}

async fn user_js(user: &ChromeUser, script: &str) -> serde_json::Value {
    user.execute(script).await.unwrap()
}

/// Chromium and chromedriver never outlive their user: after `close` (and after a drop
/// without close) the process group is gone.
#[tokio::test]
async fn browser_processes_end_with_the_user() {
    let (portal, username) = portal(300, 60).await;
    let user = ChromeUser::start(portal.target(), &username, &chrome())
        .await
        .unwrap();
    let pgid = user.driver_pid();
    assert!(group_alive(pgid), "chromedriver's group runs");
    drop(user);
    // SIGKILL is delivered asynchronously: give the kernel a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while group_alive(pgid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !group_alive(pgid),
        "processes of group {pgid} survived the drop"
    );
}

/// Whether a process of group `pgid` still runs (zombies waiting for init do not count).
fn group_alive(pgid: u32) -> bool {
    pids()
        .into_iter()
        .any(|pid| process_state(pid).is_some_and(|(state, group)| state != 'Z' && group == pgid))
}
