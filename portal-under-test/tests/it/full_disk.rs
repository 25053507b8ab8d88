//! A full disk under the SQLite store during escrow: the portal's data dir is on a small
//! tmpfs (mounted by the test: it runs as root, as `make deps` does), a file fills what is
//! left, and escrow goes on until the store cannot write. Then every refused escrow must be
//! a 507 with the JSON error shape, every acknowledged one must be in the store, and once
//! the filler is deleted the same portal process escrows again. PostgreSQL's disk is the
//! server's, not the portal's: this test is SQLite's whatever the engine under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portal_under_test::crypto::Sealer;
use serde_json::Value;

use crate::common::Key;
use crate::kill_traffic::{bootstrap, enrolled_device, escrow_body, post, start};

/// The tmpfs, unmounted when the test ends however it ends.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} (the test needs root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Fills the file system of `path` but `leave` bytes with one file.
fn fill(path: &Path, leave: u64) -> PathBuf {
    let filler = path.join("filler");
    let n = free_bytes(path).saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; n as usize]).unwrap();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_escrow_with_507_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Mount::tmpfs(&dir.path().join("disk"), "8m");
    // The log on the same disk, as in a portal whose /var fills up: a log line it cannot
    // write must not kill it.
    let boot = bootstrap(&mnt.0, &None);
    let mut portal = start(&boot.data, &boot.config, &None, &boot.log);
    let url = portal.url.clone();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let cred = enrolled_device(&c, &url, &boot.admin, "PC-FULL").await;
    let escrow = |key: Key| {
        let (c, url, cred) = (c.clone(), url.clone(), cred.clone());
        async move {
            let r = post(
                &c,
                &format!("{url}/api/agent/keys"),
                &cred,
                escrow_body(&key),
            )
            .await
            .unwrap_or_else(|e| panic!("escrow: no answer (the portal died?): {e}"));
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (key, status, body)
        }
    };

    // Up to 200 KB left: the store runs into the wall within a few thousand escrows.
    let filler = fill(&mnt.0, 200 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for _ in 0..20_000 {
        let (key, status, body) = escrow(Key::random()).await;
        match status {
            201 => acknowledged.push(key),
            507 => {
                assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
                assert!(body["error"]["message"].is_string(), "{body}");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            other => panic!("escrow on a full disk answered {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "the disk never filled ({} escrows)",
        acknowledged.len()
    );

    // Space returns: the same process serves again.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..20 {
        let (key, status, body) = escrow(Key::random()).await;
        assert_eq!(status, 201, "after space returned: {body}");
        acknowledged.push(key);
    }
    portal.child.kill().unwrap();
    portal.child.wait().unwrap();

    // Nothing acknowledged is lost (the store as a restarted portal opens it).
    let store = portal_under_test::open_store(&boot.data, None).unwrap();
    let sealer = Sealer::load_or_create(&boot.data.join("portal.key")).unwrap();
    let lost = acknowledged
        .iter()
        .filter(|k| match store.key_by_id(k.id).unwrap() {
            Some(rec) => {
                assert_eq!(
                    sealer.open(&k.id.to_be_bytes(), &rec.sealed).unwrap(),
                    k.password.as_bytes()
                );
                false
            }
            None => true,
        })
        .count();
    eprintln!(
        "full disk: {} escrows acknowledged, {refused} refused with 507, {lost} acknowledged lost",
        acknowledged.len()
    );
    assert_eq!(lost, 0);
    drop(store);
}
