//! Will a planned change send this machine to BitLocker recovery? Edit a real log as the
//! change would, and let a real TPM decide.
//!
//! [`predict`] seals a secret on a fresh swtpm to the log's state **at the unseal point**
//! ([`unseal_point`]) under a validation profile, reboots the TPM, measures the changed log up
//! to its unseal point and tries to unseal. The verdict is the TPM's: `TPM_RC_POLICY_FAIL`
//! means recovery. Software and TPM replays are compared at both boots; a disagreement is an
//! error, never a verdict.
//!
//! # The unseal point
//!
//! The Windows boot manager unseals the VMK part-way through the log; everything measured
//! after it cannot matter. Evidence in real Windows logs (go-attestation's
//! `windows_gcp_shielded_vm.json`; see ARCHITECTURE.md): PCR 11 gets an EV_COMPACT_HASH of
//! `0x10` right after the boot manager's image load, then the boot manager's SIPA trust
//! boundary in PCR 12-14 carries `SIPAEVENT_BITLOCKER_UNLOCK`, then winload's events, and at
//! the end PCR 11 gets an EV_COMPACT_HASH of `0xFFFF` (the "cap"), before the `WBCL`
//! separators in PCR 12-14. So the rules, in order:
//!
//! 1. After the first record whose SIPA events contain `BITLOCKER_UNLOCK`.
//! 2. Else before a last PCR 11 record that is the `0xFFFF` cap.
//! 3. Else after the last PCR 11 record (our own device model measures its BCD settings into
//!    PCR 11 just before unsealing: `Device::unseal_index`).
//! 4. Else the whole log (Linux logs: no BitLocker).

use std::fmt;

use serde::Serialize;

use eventlog::data::{self, EFI_CERT_SHA256, EFI_CERT_X509, MICROSOFT_OWNER};
use eventlog::describe::{device_path_files, image_load_path, uefi_variable};
use eventlog::diff::{LogDiff, NamedRecord};
use eventlog::tcg::{Record, TcgLog};
use eventlog::{sipa, EventType, HashAlg};

use super::replay::{self as tpm_replay, hashing_algorithm, TpmReplayError};
use super::{ChangeKind, Profile};

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The log lacks what the change edits.
    #[error("cannot apply {change} to this log: {reason}")]
    Change { change: ChangeKind, reason: String },
    /// The TPM failed in a way that is not a verdict, or disagrees with the software replay.
    #[error("{0}")]
    Tpm(#[from] TpmReplayError),
}

impl PredictError {
    fn change(change: ChangeKind, reason: impl Into<String>) -> Self {
        Self::Change {
            change,
            reason: reason.into(),
        }
    }
}

/// Where the boot manager unseals, as an index into [`TcgLog::records`]: records before it
/// are measured when the TPM is asked to unseal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsealPoint {
    /// Number of records measured before the unseal.
    pub index: usize,
    /// Which rule of the module docs placed it, with the record it hangs on.
    pub reason: String,
}

/// Finds the unseal point (rules in the module docs).
pub fn unseal_point(log: &TcgLog) -> UnsealPoint {
    let has_unlock = |r: &Record| {
        matches!(
            r.event_type,
            EventType::EV_EVENT_TAG | EventType::EV_NO_ACTION
        ) && (12..=14).contains(&r.pcr)
            && sipa::parse(&r.data).is_ok_and(|evs| {
                evs.iter()
                    .flat_map(|e| e.walk())
                    .any(|e| e.tag == sipa::BITLOCKER_UNLOCK)
            })
    };
    if let Some(i) = log.records.iter().position(has_unlock) {
        return UnsealPoint {
            index: i + 1,
            reason: format!(
                "after record #{} (PCR {}): the boot manager's SIPA BITLOCKER_UNLOCK",
                log.records[i].number, log.records[i].pcr
            ),
        };
    }
    if let Some(i) = log.records.iter().rposition(|r| r.pcr == 11) {
        let r = &log.records[i];
        let pcr11 = log.records.iter().filter(|r| r.pcr == 11).count();
        if pcr11 > 1 && r.data == [0xff, 0xff, 0, 0] {
            return UnsealPoint {
                index: i,
                reason: format!("before record #{}: the PCR 11 cap (0xFFFF)", r.number),
            };
        }
        return UnsealPoint {
            index: i + 1,
            reason: format!("after record #{}: the last PCR 11 measurement", r.number),
        };
    }
    UnsealPoint {
        index: log.records.len(),
        reason: "end of log: no Windows boot manager events (PCR 11-14)".into(),
    }
}

/// The outcome of [`predict`].
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Profile sealed to (`"7,11"`, ...).
    pub profile: Profile,
    /// PCR indices of the profile.
    pub profile_pcrs: Vec<u32>,
    /// The change applied.
    pub change: ChangeKind,
    /// Bank the secret was sealed to (SHA-256 if the log has it).
    pub bank: HashAlg,
    /// Unseal point of the original log.
    pub unseal_point: UnsealPoint,
    /// Unseal point of the changed log.
    pub changed_unseal_point: UnsealPoint,
    /// Whether the machine would show the recovery screen.
    pub recovery: bool,
    /// Whether the TPM released the secret after the changed boot.
    pub tpm_unsealed: bool,
    /// The TPM's error when it refused (e.g. TPM_RC_POLICY_FAIL).
    pub tpm_error: Option<String>,
    /// The TPM's response code when it refused.
    pub tpm_response_code: Option<u32>,
    /// Profile PCRs that differ at the unseal point.
    pub changed_profile_pcrs: Vec<u32>,
    /// Every PCR that differs at the unseal point, with the records behind it.
    pub diff: LogDiff,
    /// Why, in words (and checks outside the TPM, such as BCD validation).
    pub reasons: Vec<String>,
    /// The changed log.
    #[serde(skip)]
    pub changed_log: TcgLog,
}

/// Seals under `profile` to `log` at its unseal point on a fresh swtpm, boots the log changed
/// by `change` into the same TPM and tries to unseal (see the module docs).
pub fn predict(
    log: &TcgLog,
    profile: Profile,
    change: ChangeKind,
) -> Result<Prediction, PredictError> {
    if change == ChangeKind::FirmwareUpdateSuspended {
        return Err(PredictError::change(
            change,
            "with protection suspended the TPM is not asked at the next boot; \
             `--change firmware_update` predicts the update itself",
        ));
    }
    let changed = apply(log, change)?;
    let bank = log.policy_bank();
    let alg = hashing_algorithm(bank);
    let pcrs: Vec<u8> = profile
        .pcrs()
        .iter()
        .filter_map(|&p| u8::try_from(p).ok())
        .collect();
    let (up, cup) = (unseal_point(log), unseal_point(&changed));

    // First boot: measure up to the unseal point, check the TPM agrees, seal.
    let mut tpm = tpm_replay::spawn_for(log)?;
    tpm_replay::extend(&mut tpm, &log.records[..up.index])?;
    let before = log.replay_prefix(up.index);
    tpm_replay::compare(&before, &tpm_replay::read(&mut tpm, &log.banks)?)?;
    let secret: [u8; 32] = rand::random();
    let blob = tpm
        .seal_in_bank(
            &secret,
            &swtpm::SealPolicy {
                pcrs: pcrs.clone(),
                expected: None,
                auth_value: None,
                dictionary_attack_protected: false,
            },
            alg,
        )
        .map_err(TpmReplayError::from)?;

    // Second boot: the changed log, same TPM.
    tpm.reboot_with_startup_locality(changed.startup_locality)
        .map_err(TpmReplayError::from)?;
    tpm_replay::extend(&mut tpm, &changed.records[..cup.index])?;
    let after = changed.replay_prefix(cup.index);
    tpm_replay::compare(&after, &tpm_replay::read(&mut tpm, &changed.banks)?)?;
    let (tpm_unsealed, tpm_error, tpm_response_code) = match tpm
        .unseal_in_bank(&blob, &pcrs, alg, None)
    {
        Ok(s) if s == secret => (true, None, None),
        Ok(_) => {
            return Err(
                TpmReplayError::Unsupported("the TPM unsealed a different secret".into()).into(),
            )
        }
        Err(e @ swtpm::Error::PolicyFailed { .. }) => {
            (false, Some(e.to_string()), e.response_code())
        }
        Err(e) => return Err(TpmReplayError::Tpm(e).into()),
    };

    let diff = LogDiff::between(
        log,
        &before,
        &log.records[..up.index],
        &changed,
        &after,
        &changed.records[..cup.index],
    );
    let changed_profile_pcrs: Vec<u32> = diff
        .pcr_indices()
        .into_iter()
        .filter(|p| profile.pcrs().contains(p))
        .collect();
    let mut reasons = Vec::new();
    if tpm_unsealed {
        reasons.push(format!(
            "the TPM unsealed: no PCR of {profile} changed before the unseal point"
        ));
    } else {
        let list: Vec<String> = changed_profile_pcrs.iter().map(u32::to_string).collect();
        reasons.push(format!(
            "the TPM refused to unseal: PCR {} of {profile} changed",
            list.join(",")
        ));
    }
    let mut recovery = !tpm_unsealed;
    if change == ChangeKind::BcdDebugOn {
        // domain.md, Microsoft "BCD settings and BitLocker": bootdebug is always validated;
        // the boot manager compares it with the settings saved at the last seal.
        recovery = true;
        reasons.push(
            "BitLocker's BCD validation refuses boot debugging (bootdebug, 0x16000010) \
             whatever the PCRs say: recovery, event 523"
                .into(),
        );
    }
    Ok(Prediction {
        profile,
        profile_pcrs: profile.pcrs().to_vec(),
        change,
        bank,
        unseal_point: up,
        changed_unseal_point: cup,
        recovery,
        tpm_unsealed,
        tpm_error,
        tpm_response_code,
        changed_profile_pcrs,
        diff,
        reasons,
        changed_log: changed,
    })
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "change {:?} under {} ({} bank)",
            self.change, self.profile, self.bank
        )?;
        writeln!(f, "unseal point: {}", self.unseal_point.reason)?;
        writeln!(
            f,
            "verdict: {}",
            if self.recovery {
                "RECOVERY"
            } else {
                "no recovery"
            }
        )?;
        if let Some(e) = &self.tpm_error {
            writeln!(f, "TPM: {e}")?;
        } else {
            writeln!(f, "TPM: unsealed")?;
        }
        for r in &self.reasons {
            writeln!(f, "why: {r}")?;
        }
        write!(f, "{}", self.diff)
    }
}

/// `H(old digest || tag)` in every bank: the measured code changed (firmware, image).
fn redigest(r: &mut Record, tag: &[u8]) {
    for (alg, d) in &mut r.digests {
        *d = alg.extend(d, tag);
    }
}

/// Replaces a record's data and re-measures it the way it was measured: the hash of the
/// whole data, or of a UEFI variable's VariableData only (EDK2's EV_EFI_VARIABLE_BOOT), or,
/// when the digest was of something not in the log, an opaque new digest.
fn set_data(r: &mut Record, new: Vec<u8>) {
    let old_var = uefi_variable(&r.data).map(|v| v.data.to_vec());
    let new_var = uefi_variable(&new).map(|v| v.data.to_vec());
    for (alg, d) in &mut r.digests {
        *d = if *d == alg.digest(&r.data) {
            alg.digest(&new)
        } else if let (Some(o), Some(n)) = (&old_var, &new_var) {
            if *d == alg.digest(o) {
                alg.digest(n)
            } else {
                alg.extend(d, &new)
            }
        } else {
            alg.extend(d, &new)
        };
    }
    r.data = new;
}

/// UEFI_VARIABLE_DATA with the same GUID and name and new VariableData.
fn with_var_data(old: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let v = uefi_variable(old)?;
    let mut out = old.get(..24)?.to_vec();
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(old.get(32..v.data_offset)?);
    out.extend_from_slice(value);
    Some(out)
}

fn new_record(
    log: &TcgLog,
    pcr: u32,
    event_type: EventType,
    data: Vec<u8>,
    measured: &[u8],
) -> Record {
    Record {
        number: 0,
        offset: 0,
        pcr,
        event_type,
        digests: log.banks.iter().map(|&a| (a, a.digest(measured))).collect(),
        data,
    }
}

fn find_var(log: &TcgLog, pcr: u32, ty: EventType, name: &str) -> Option<usize> {
    log.records.iter().position(|r| {
        r.pcr == pcr && r.event_type == ty && uefi_variable(&r.data).is_some_and(|v| v.name == name)
    })
}

fn boot_manager(log: &TcgLog) -> Option<usize> {
    let apps: Vec<usize> = (0..log.records.len())
        .filter(|&i| {
            log.records[i].pcr == 4
                && log.records[i].event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        })
        .collect();
    apps.iter()
        .copied()
        .find(|&i| {
            image_load_path(&log.records[i].data)
                .map(device_path_files)
                .unwrap_or_default()
                .iter()
                .any(|f| f.to_ascii_lowercase().contains("bootmgfw.efi"))
        })
        .or_else(|| apps.first().copied())
}

/// The log as it would be after `change`.
pub fn apply(log: &TcgLog, change: ChangeKind) -> Result<TcgLog, PredictError> {
    let mut out = log.clone();
    let err = |reason: &str| PredictError::change(change, reason);
    match change {
        ChangeKind::FirmwareUpdate | ChangeKind::FirmwareUpdateSuspended => {
            let code = [
                EventType::EV_S_CRTM_VERSION,
                EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB,
                EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2,
                EventType::EV_POST_CODE,
            ];
            let mut n = 0;
            for r in out
                .records
                .iter_mut()
                .filter(|r| r.pcr == 0 && code.contains(&r.event_type))
            {
                if r.event_type == EventType::EV_S_CRTM_VERSION {
                    let mut text = sipa::utf16_text(&r.data).unwrap_or_default();
                    text.push_str(" (updated)");
                    set_data(r, data::utf16z(&text));
                } else {
                    redigest(r, b"firmware update");
                }
                n += 1;
            }
            if n == 0 {
                return Err(err("no firmware code measurement in PCR 0"));
            }
        }
        ChangeKind::OptionRomAdded => {
            let rom = b"add-in card option ROM (simulated)";
            let path = data::file_device_path("\\addin-card.rom");
            let rec = new_record(
                log,
                2,
                EventType::EV_EFI_BOOT_SERVICES_DRIVER,
                data::image_load_event(0, rom.len() as u64, 0, &path),
                rom,
            );
            let at = out
                .records
                .iter()
                .position(|r| r.pcr == 2 && r.event_type == EventType::EV_SEPARATOR)
                .or_else(|| out.records.iter().position(|r| r.pcr == 4))
                .ok_or_else(|| err("no PCR 2 separator or PCR 4 event to place it before"))?;
            out.records.insert(at, rec);
        }
        ChangeKind::SecureBootDbUpdate | ChangeKind::SecureBootDbxUpdate => {
            let (name, list) = if change == ChangeKind::SecureBootDbUpdate {
                (
                    "db",
                    data::efi_signature_lists(
                        &EFI_CERT_X509,
                        &MICROSOFT_OWNER,
                        &[b"Windows UEFI CA 2023 (stand-in certificate)".to_vec()],
                    ),
                )
            } else {
                let h: Vec<u8> = HashAlg::Sha256.digest(b"revoked boot manager (simulated)");
                (
                    "dbx",
                    data::efi_signature_lists(&EFI_CERT_SHA256, &MICROSOFT_OWNER, &[h]),
                )
            };
            let i = find_var(log, 7, EventType::EV_EFI_VARIABLE_DRIVER_CONFIG, name)
                .ok_or_else(|| err(&format!("no PCR 7 measurement of {name}")))?;
            let r = &mut out.records[i];
            let mut value = uefi_variable(&r.data)
                .map(|v| v.data.to_vec())
                .unwrap_or_default();
            value.extend_from_slice(&list);
            let new = with_var_data(&r.data, &value).ok_or_else(|| err("bad variable data"))?;
            set_data(r, new);
        }
        ChangeKind::BootManagerSameSigner | ChangeKind::BootManagerOtherSigner => {
            let i = boot_manager(log).ok_or_else(|| err("no boot application in PCR 4"))?;
            redigest(&mut out.records[i], b"boot manager update");
            if change == ChangeKind::BootManagerOtherSigner {
                let cert = data::efi_signature_data(
                    &MICROSOFT_OWNER,
                    b"Microsoft Corporation UEFI CA 2011 (stand-in certificate)",
                );
                // The authority logged for the boot manager: the last PCR 7 authority event
                // before its image load (firmware logs it at verification).
                let auth = out.records[..i].iter().rposition(|r| {
                    r.pcr == 7 && r.event_type == EventType::EV_EFI_VARIABLE_AUTHORITY
                });
                match auth {
                    Some(a) => {
                        let new = with_var_data(&out.records[a].data, &cert)
                            .ok_or_else(|| err("bad authority data"))?;
                        set_data(&mut out.records[a], new);
                    }
                    None => {
                        let d = data::uefi_variable_data(
                            &data::EFI_IMAGE_SECURITY_DATABASE,
                            "db",
                            &cert,
                        );
                        let rec =
                            new_record(log, 7, EventType::EV_EFI_VARIABLE_AUTHORITY, d.clone(), &d);
                        out.records.insert(i, rec);
                    }
                }
            }
        }
        ChangeKind::SecureBootOff => {
            let i = find_var(
                log,
                7,
                EventType::EV_EFI_VARIABLE_DRIVER_CONFIG,
                "SecureBoot",
            )
            .ok_or_else(|| err("no SecureBoot variable in PCR 7"))?;
            let new = with_var_data(&out.records[i].data, &[0])
                .ok_or_else(|| err("bad variable data"))?;
            set_data(&mut out.records[i], new);
            out.records
                .retain(|r| !(r.pcr == 7 && r.event_type == EventType::EV_EFI_VARIABLE_AUTHORITY));
        }
        ChangeKind::BcdDebugOn => {
            let mut n = 0;
            for r in out
                .records
                .iter_mut()
                .filter(|r| (12..=14).contains(&r.pcr) && r.event_type == EventType::EV_EVENT_TAG)
            {
                let Ok(evs) = sipa::parse(&r.data) else {
                    continue;
                };
                let spots: Vec<usize> = evs
                    .iter()
                    .flat_map(|e| e.walk())
                    .filter(|e| e.tag == sipa::BOOTDEBUGGING && e.payload.len() == 1)
                    .map(|e| e.offset + 8)
                    .collect();
                if spots.is_empty() {
                    continue;
                }
                let mut new = r.data.clone();
                for s in spots {
                    if let Some(b) = new.get_mut(s) {
                        *b = 1;
                        n += 1;
                    }
                }
                set_data(r, new);
            }
            if n == 0 {
                return Err(err("no SIPA BOOTDEBUGGING event in PCR 12-14"));
            }
        }
        ChangeKind::BcdBootOrder => {
            let i = find_var(log, 1, EventType::EV_EFI_VARIABLE_BOOT, "BootOrder")
                .ok_or_else(|| err("no BootOrder measurement in PCR 1"))?;
            let value = uefi_variable(&out.records[i].data)
                .map(|v| v.data.to_vec())
                .unwrap_or_default();
            if value.len() < 4 {
                return Err(err("BootOrder has fewer than two entries"));
            }
            let mut v = value.clone();
            v.rotate_right(2);
            let new =
                with_var_data(&out.records[i].data, &v).ok_or_else(|| err("bad variable data"))?;
            set_data(&mut out.records[i], new);
        }
        ChangeKind::OptionRomChanged => {
            return Err(err(
                "a real log does not say which option ROM is which card's; use option_rom_added",
            ))
        }
        ChangeKind::MbrBootCodeChanged | ChangeKind::NtfsBootSectorChanged => {
            return Err(err(
                "only a BIOS measures it (legacy PCR 4 or 8), and a log-driven device is UEFI: \
                 play it as a scenario with `profile: legacy`",
            ))
        }
        ChangeKind::None
        | ChangeKind::Reboot
        | ChangeKind::LostPin
        | ChangeKind::DiskMoved
        | ChangeKind::TpmCleared
        | ChangeKind::TpmReplaced => {
            return Err(err(
                "it changes no measurement a log records (the TPM, the disk's machine or the \
                 user changes): play it as a scenario",
            ))
        }
    }
    Ok(out)
}

/// The records a change touched, for tests and reports: records of `after` not in `before`.
pub fn touched(before: &TcgLog, after: &TcgLog) -> Vec<NamedRecord> {
    after
        .records
        .iter()
        .filter(|r| !before.records.contains(r))
        .map(NamedRecord::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ChangeKind;
    use clap::ValueEnum;

    /// One spelling: `--change`, the JSON and messages all use the snake_case name; the
    /// kebab-case names of earlier releases still parse, to the same change.
    #[test]
    fn log_changes_are_spelled_snake_case_with_kebab_case_aliases() {
        for &change in ChangeKind::value_variants() {
            let name = change.to_string();
            assert_eq!(
                serde_json::to_value(change).ok(),
                Some(serde_json::Value::String(name.clone()))
            );
            assert_eq!(ChangeKind::from_str(&name, false), Ok(change));
            assert_eq!(
                ChangeKind::from_str(&name.replace('_', "-"), false),
                Ok(change),
                "{name}"
            );
        }
        assert_eq!(
            ChangeKind::from_str("firmware-update", false),
            Ok(ChangeKind::FirmwareUpdate)
        );
        // The log-change names of earlier releases.
        for (old, change) in [
            ("option_rom", ChangeKind::OptionRomAdded),
            ("db_update", ChangeKind::SecureBootDbUpdate),
            ("dbx-update", ChangeKind::SecureBootDbxUpdate),
            ("boot_debugging_on", ChangeKind::BcdDebugOn),
            ("boot-order", ChangeKind::BcdBootOrder),
        ] {
            assert_eq!(ChangeKind::from_str(old, false), Ok(change), "{old}");
        }
    }
}
