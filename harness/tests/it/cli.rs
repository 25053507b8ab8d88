//! The real `harness` binary against the vectors.

use std::process::Output;

use crate::common::vectors;

fn harness(args: &[&str]) -> Output {
    crate::common::harness().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn check_accepts_every_separator_style() {
    let v = vectors();
    let pw = &v.vectors[0].recovery_password;
    for form in [pw.clone(), pw.replace('-', " "), pw.replace('-', "")] {
        let o = harness(&["recovery-password", "check", &form]);
        assert_eq!(o.status.code(), Some(0), "{form}: {}", stderr(&o));
        assert_eq!(stdout(&o), "valid\n");
    }
    // Blocks as separate arguments, as a shell splits an unquoted spaced password.
    let mut args = vec!["recovery-password", "check"];
    args.extend(pw.split('-'));
    assert_eq!(harness(&args).status.code(), Some(0));
}

#[test]
fn check_names_the_bad_block() {
    let v = vectors();
    for inv in &v.invalid_passwords {
        let o = harness(&["recovery-password", "check", &inv.password]);
        assert_eq!(o.status.code(), Some(1), "{}", inv.password);
        assert!(stdout(&o).is_empty());
        let err = stderr(&o);
        // The vector's reason starts with "block N" or "N blocks"; our message names the same.
        let block = inv
            .why
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(':');
        if inv.why.starts_with("block") {
            assert!(
                err.contains(&format!("block {block}")),
                "{err} vs {}",
                inv.why
            );
        } else {
            assert!(err.contains("got 7 block"), "{err}");
        }
    }
    let o = harness(&[
        "recovery-password",
        "check",
        "042647-302313-590459-071500-554323-116567-412181-516978",
    ]);
    assert!(stderr(&o).contains("block 3") && stderr(&o).contains("not divisible by 11"));
}

#[test]
fn stretch_and_unwrap_reproduce_the_first_vectors() {
    let v = vectors();
    // Two vectors (one real, one synthetic) keep the test to a few stretches.
    for x in [&v.vectors[0], &v.vectors[2]] {
        let o = harness(&[
            "recovery-password",
            "stretch",
            &x.recovery_password.replace('-', " "),
            "--salt",
            &x.salt_hex,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), x.stretched_key_hex);

        let o = harness(&[
            "recovery-password",
            "unwrap",
            &x.recovery_password.replace('-', ""),
            "--salt",
            &x.salt_hex,
            "--nonce",
            &x.nonce_hex,
            "--mac",
            &x.mac_hex,
            "--ciphertext",
            &x.ciphertext_hex,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), x.vmk_hex);
    }
}

#[test]
fn unwrap_with_wrong_mac_exits_1_and_bad_hex_exits_2() {
    let v = vectors();
    let x = &v.vectors[1];
    let mut mac = hex::decode(&x.mac_hex).unwrap();
    mac[0] ^= 0x80;
    let bad_mac = hex::encode(mac);
    let run = |salt: &str, nonce: &str, mac: &str| {
        harness(&[
            "recovery-password",
            "unwrap",
            &x.recovery_password,
            "--salt",
            salt,
            "--nonce",
            nonce,
            "--mac",
            mac,
            "--ciphertext",
            &x.ciphertext_hex,
        ])
    };
    let o = run(&x.salt_hex, &x.nonce_hex, &bad_mac);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("MAC"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    let o = run("zz", &x.nonce_hex, &x.mac_hex);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--salt"), "{}", stderr(&o));
    let o = run(&x.salt_hex, &x.nonce_hex[..22], &x.mac_hex);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--nonce"), "{}", stderr(&o));
    let o = run(&x.salt_hex, &x.nonce_hex, "00");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--mac") && stderr(&o).contains("16 bytes"));
}

/// `harness list` lists what a run would play (README): without a filter, not the
/// real-firmware scenarios, which `harness run` plays only when a filter or their file
/// names them.
#[test]
fn list_shows_what_a_run_would_play() {
    let catalog = crate::common::workspace_root().join("scenarios");
    let catalog = catalog.to_str().unwrap();
    let names = |args: &[&str]| -> Vec<String> {
        let o = harness(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    let all = names(&["list", catalog]);
    assert!(all.len() >= 20, "{all:?}");
    assert!(
        !all.iter().any(|n| n.starts_with("real-firmware-")),
        "{all:?}"
    );
    let asked = names(&["list", catalog, "--filter", "tag:real-firmware"]);
    assert_eq!(asked.len(), 3, "{asked:?}");
    let file = format!("{catalog}/real-firmware-db-update-secure-boot.yaml");
    assert_eq!(
        names(&["list", &file]),
        ["real-firmware-db-update-secure-boot"]
    );
    // The catalog and one real-firmware file besides it: that one is added, once.
    let dotted = format!("{catalog}/./real-firmware-db-update-secure-boot.yaml");
    let plus = names(&["list", catalog, &dotted]);
    assert_eq!(plus.len(), all.len() + 1, "{plus:?}");
    assert!(plus.contains(&"real-firmware-db-update-secure-boot".to_string()));
}
