use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{ready_line, Key};

fn client(ca_pem: &[u8]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn real_tls_port_with_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, stop_tx, server) = crate::common::tls_portal(dir.path()).await;
    assert!(ready.url.starts_with("https://127.0.0.1:"));
    assert!(ready
        .line()
        .starts_with("PORTAL-READY {\"url\":\"https://127.0.0.1:"));
    let ca = ready.ca_cert.clone().unwrap();
    assert!(ca.is_absolute());
    let c = client(&std::fs::read(&ca).unwrap());
    let r = c
        .get(format!("{}/healthz", ready.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // Under TLS the session cookie is Secure.
    let r = c
        .get(format!("{}/SelfService/login", ready.url))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
    );
    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting
        .get(format!("{}/healthz", ready.url))
        .send()
        .await
        .is_err());
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("portal.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_portal-under-test");

#[tokio::test]
async fn real_binary_bootstrap_import_serve_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The engine under test: every command gets the same database.
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));

    let keys: Vec<Key> = (0..20).map(|_| Key::random()).collect();
    let mut jsonl = String::new();
    for (i, k) in keys.iter().enumerate() {
        let mut v = k.json();
        v["device"] = Value::from(format!("PC-{i:04}"));
        v["user"] = Value::from("CONTOSO\\alice");
        jsonl.push_str(&v.to_string());
        jsonl.push('\n');
    }
    let file = dir.path().join("keys.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let out = Command::new(BIN)
        .arg("import")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(&db_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "imported 20 records"
    );
    // A bad line is refused with its number and field.
    std::fs::write(
        &file,
        format!(
            "{}\n{{\"device\":\"PC-1\"}}\n",
            jsonl.lines().next().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("import")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(&db_args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("volume_id"), "{err}");

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(&db_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child, "serve");
    let url = ready["url"].as_str().unwrap().to_string();
    let ca = ready["ca_cert"].as_str().unwrap().to_string();
    let c = client(&std::fs::read(&ca).unwrap());
    let r = c.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{url}/api/admin/audit"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "bootstrap token works against the server");
    // SIGTERM -> clean exit.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn insecure_http_ready_line_has_null_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child, "serve --insecure-http");
    assert!(ready["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(ready["ca_cert"].is_null());
    let r = reqwest::get(format!("{}/healthz", ready["url"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

/// A bad `--config` file: exit status 1 and one line on stderr naming the file, the field
/// and the position, each once (the parser's message used to be printed twice).
#[test]
fn a_bad_config_file_is_named_once_with_its_field_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portal.json");
    std::fs::write(&config, r#"{"settings": {"idle_timeout": 5}}"#).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no PORTAL-READY line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(line.contains("portal.json"), "{line}");
    assert!(line.contains("line 1 column"), "{line}");
    assert_eq!(
        line.matches("unknown field `idle_timeout`").count(),
        1,
        "{line}"
    );
}

/// A data directory that cannot be made (its parent is a file) or a TLS file that does not
/// exist: exit status 1, the path and the system's reason each once on stderr.
#[test]
fn start_errors_name_the_path_and_the_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(Vec<std::ffi::OsString>, &str, &str); 2] = [
        (
            vec![
                "--insecure-http".into(),
                "--data-dir".into(),
                file.join("data").into(),
            ],
            "a-file/data",
            "Not a directory",
        ),
        (
            vec![
                "--data-dir".into(),
                dir.path().join("data").into(),
                "--tls-cert".into(),
                missing.clone().into(),
                "--tls-key".into(),
                missing.into(),
            ],
            "missing.pem",
            "No such file or directory",
        ),
    ];
    for (args, path, reason) in cases {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in {stderr}"));
        assert!(line.contains(path), "{line}");
        assert_eq!(line.matches(reason).count(), 1, "{line}");
    }
}
