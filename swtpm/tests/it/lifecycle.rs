use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swtpm::{Error, Tpm};

use crate::common::{eventually, exists, process_alive, SHA256};

#[test]
fn a_fresh_tpm_has_zero_pcrs_and_ff_in_17_to_22() {
    let mut tpm = Tpm::spawn().unwrap();
    let pcrs = tpm.pcr_read(SHA256, &[0, 7, 16, 17, 22, 23]).unwrap();
    let value = |i: u8| pcrs.iter().find(|(j, _)| *j == i).unwrap().1.clone();
    assert_eq!(value(0), vec![0; 32]);
    assert_eq!(value(7), vec![0; 32]);
    assert_eq!(value(17), vec![0xff; 32]);
    assert_eq!(value(22), vec![0xff; 32]);
    assert_eq!(value(23), vec![0; 32]);
}

#[test]
fn killing_swtpm_mid_use_gives_tpm_gone_within_two_seconds() {
    let mut tpm = Tpm::spawn().unwrap();
    tpm.pcr_read(SHA256, &[0]).unwrap();
    let pid = tpm.process().pid();
    // SIGKILL from outside, as a crash would.
    // SAFETY-free: the `kill` program, not libc.
    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(eventually(2.0, || !process_alive(pid)));
    let start = Instant::now();
    let err = tpm.pcr_read(SHA256, &[0]).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, Error::TpmGone { .. }), "{err:?}");
    // Every later call too, including the machine acts.
    assert!(matches!(tpm.reboot(), Err(Error::TpmGone { .. })));
    assert!(matches!(
        tpm.dictionary_attack_lock_reset(),
        Err(Error::TpmGone { .. })
    ));
}

#[test]
fn a_command_cut_off_by_sigkill_says_how_swtpm_ended() {
    let mut tpm = Tpm::spawn().unwrap();
    tpm.pcr_read(SHA256, &[0]).unwrap();
    let pid = tpm.process().pid().to_string();
    let signal = |sig: &str, pid: &str| {
        assert!(Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap()
            .success());
    };
    // Stopped, swtpm still counts as running: the next command goes out and waits for an
    // answer, which the SIGKILL cuts off mid-way.
    signal("-STOP", &pid);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        signal("-KILL", &pid);
    });
    let err = tpm.pcr_read(SHA256, &[0]).unwrap_err();
    killer.join().unwrap();
    let message = err.to_string();
    // The TCTI's error (the path under test), named with swtpm's exit status.
    assert!(
        message.starts_with("the TPM is gone: swtpm exited (signal: 9 (SIGKILL)): TCTI error"),
        "{message}"
    );
}

#[test]
fn two_hundred_spawn_drop_cycles_leave_no_process_and_no_state_directory() {
    let mut leftovers = Vec::new();
    for _ in 0..200 {
        let tpm = Tpm::spawn().unwrap();
        let pid = tpm.process().pid();
        let dir = tpm.process().state_dir().to_path_buf();
        drop(tpm);
        leftovers.push((pid, dir));
    }
    for (pid, dir) in leftovers {
        assert!(!process_alive(pid), "swtpm {pid} still running");
        assert!(!exists(&dir), "{} still exists", dir.display());
    }
}

/// Not a test on its own: the child half of the SIGKILL test below. It owns three TPMs,
/// prints their pids and waits to be killed.
#[test]
#[ignore = "run only as the child of sigkilled_owner_leaves_no_swtpm_behind"]
fn child_owning_three_tpms() {
    if std::env::var_os("SWTPM_TEST_CHILD").is_none() {
        return;
    }
    let tpms: Vec<Tpm> = (0..3).map(|_| Tpm::spawn().unwrap()).collect();
    let pids: Vec<String> = tpms.iter().map(|t| t.process().pid().to_string()).collect();
    println!("PIDS {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn sigkilled_owner_leaves_no_swtpm_behind() {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "lifecycle::child_owning_three_tpms",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SWTPM_TEST_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pids: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            // libtest prints the test name on the same line before the test's own output.
            line.split_once("PIDS ")
                .map(|(_, rest)| rest.split(' ').map(|p| p.parse().unwrap()).collect())
        })
        .expect("the child printed its swtpm pids");
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| process_alive(p)));

    child.kill().unwrap(); // SIGKILL: no destructor runs in the child.
    child.wait().unwrap();
    assert!(
        eventually(2.0, || pids.iter().all(|&p| !process_alive(p))),
        "swtpm outlived its SIGKILLed owner: {pids:?}"
    );
}
