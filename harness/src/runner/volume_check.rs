//! `harness run --check-volume-with cryptsetup,dislocker`: independent implementations judge
//! the device's volume image with the key the portal handed out, and again after rotation.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::steps::{because, ensure, Failure, StepRecord, StepResult, Steps};
use bitlocker::external::{self, ExternalError, ToolSecret};
use bitlocker::KeyProtectorId;

/// An outside tool that can judge a BitLocker image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VolumeTool {
    /// Debian's `cryptsetup` (BITLK): `bitlkDump` and `open --test-passphrase`.
    Cryptsetup,
    /// `dislocker-file`: decrypts the whole volume into a file.
    Dislocker,
}

/// Which tools judge the volume at the end of a scenario (none: no check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeJudges {
    /// Use cryptsetup.
    pub cryptsetup: bool,
    /// Use dislocker-file.
    pub dislocker: bool,
}

impl VolumeJudges {
    /// The judges named on the command line.
    pub fn from_tools(tools: &[VolumeTool]) -> Self {
        VolumeJudges {
            cryptsetup: tools.contains(&VolumeTool::Cryptsetup),
            dislocker: tools.contains(&VolumeTool::Dislocker),
        }
    }

    /// Whether any tool judges.
    pub fn any(&self) -> bool {
        self.cryptsetup || self.dislocker
    }

    /// Every named tool is installed (checked before a run starts: a missing tool is a
    /// usage error, never a silently skipped step).
    pub fn ensure_installed(&self) -> Result<(), ExternalError> {
        if self.cryptsetup && !external::cryptsetup_available() {
            return Err(ExternalError::Missing {
                tool: "cryptsetup",
                package: "cryptsetup-bin",
            });
        }
        if self.dislocker && !external::dislocker_available() {
            return Err(ExternalError::Missing {
                tool: "dislocker-file",
                package: "dislocker",
            });
        }
        Ok(())
    }
}

/// The volume under judgement: the image file and the SHA-256 of the data written to it.
#[derive(Debug, Clone, Copy)]
pub struct JudgedVolume<'a> {
    /// The image file.
    pub image: &'a Path,
    /// SHA-256 of the decrypted data the harness wrote.
    pub data_sha256: [u8; 32],
}

/// The steps that check the portal's key against the image, on their own (for tests and
/// tools outside a scenario run): every step runs, a failure does not stop the next.
pub fn check_portal_key(
    judges: VolumeJudges,
    volume: JudgedVolume<'_>,
    key_id: KeyProtectorId,
    password: &str,
) -> Vec<StepRecord> {
    let mut steps = Steps::default();
    for step in portal_key_steps(judges) {
        if let Ok(Some(note)) = steps.run(step.name(), || step.check(volume, key_id, password)) {
            steps.note(note);
        }
    }
    steps.into_records()
}

/// The portal's key opens the volume in the named tools (the scenario's steps; the first
/// failure ends the scenario).
pub(crate) fn portal_key_opens(
    steps: &mut Steps,
    judges: VolumeJudges,
    volume: JudgedVolume<'_>,
    key_id: KeyProtectorId,
    password: &str,
) -> Result<(), Failure> {
    for step in portal_key_steps(judges) {
        if let Some(note) = steps.run(step.name(), || step.check(volume, key_id, password))? {
            steps.note(note);
        }
    }
    Ok(())
}

/// After a rotation: cryptsetup lists the new ID and not the old, refuses the old password
/// and accepts the new one; dislocker decrypts with the new one.
pub(crate) fn rotation_seen(
    steps: &mut Steps,
    judges: VolumeJudges,
    volume: JudgedVolume<'_>,
    old: (KeyProtectorId, &str),
    new: (KeyProtectorId, &str),
) -> Result<(), Failure> {
    if judges.cryptsetup {
        steps.run(
            "cryptsetup bitlkDump lists the new key ID and not the old",
            || {
                let ids = dumped_recovery_ids(volume.image)?;
                let (old_id, new_id) = (guid(old.0), guid(new.0));
                ensure(
                    ids.contains(&new_id) && !ids.contains(&old_id),
                    format!("{new_id} listed, {old_id} gone"),
                    format!("recovery-passphrase keyslots {ids:?}"),
                )
            },
        )?;
        steps.run("cryptsetup refuses the old recovery password", || {
            let accepted = cryptsetup_accepts(volume.image, old.1)?;
            ensure(!accepted, "refused (no VMK opens)", "accepted")
        })?;
        steps.run("cryptsetup accepts the new recovery password", || {
            let accepted = cryptsetup_accepts(volume.image, new.1)?;
            ensure(accepted, "accepted", "refused (no VMK opens)")
        })?;
    }
    if judges.dislocker {
        let note = steps.run(
            "dislocker-file decrypts with the new recovery password and the data matches",
            || dislocker_matches(volume, new.1),
        )?;
        if let Some(note) = note {
            steps.note(note);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum PortalKeyStep {
    Listed,
    Accepted,
    Decrypted,
}

fn portal_key_steps(judges: VolumeJudges) -> Vec<PortalKeyStep> {
    let mut out = Vec::new();
    if judges.cryptsetup {
        out.extend([PortalKeyStep::Listed, PortalKeyStep::Accepted]);
    }
    if judges.dislocker {
        out.push(PortalKeyStep::Decrypted);
    }
    out
}

impl PortalKeyStep {
    fn name(self) -> &'static str {
        match self {
            PortalKeyStep::Listed => "cryptsetup bitlkDump lists the portal's key ID",
            PortalKeyStep::Accepted => "cryptsetup accepts the portal's recovery password",
            PortalKeyStep::Decrypted => {
                "dislocker-file decrypts with the portal's recovery password and the data matches"
            }
        }
    }

    fn check(
        self,
        volume: JudgedVolume<'_>,
        key_id: KeyProtectorId,
        password: &str,
    ) -> StepResult<Option<String>> {
        match self {
            PortalKeyStep::Listed => {
                let ids = dumped_recovery_ids(volume.image)?;
                let want = guid(key_id);
                ensure(
                    ids.contains(&want),
                    format!("a recovery-passphrase keyslot {want}"),
                    format!("recovery-passphrase keyslots {ids:?}"),
                )?;
                Ok(None)
            }
            PortalKeyStep::Accepted => {
                let accepted = cryptsetup_accepts(volume.image, password)?;
                ensure(accepted, "accepted", "refused (no VMK opens)")?;
                Ok(None)
            }
            PortalKeyStep::Decrypted => dislocker_matches(volume, password),
        }
    }
}

fn guid(id: KeyProtectorId) -> String {
    id.uuid().hyphenated().to_string()
}

fn dumped_recovery_ids(image: &Path) -> StepResult<Vec<String>> {
    let dump = external::cryptsetup_dump(image).map_err(because("a bitlkDump listing"))?;
    Ok(external::dumped_protectors(&dump)
        .into_iter()
        .filter(|p| p.protection == "VMK protected with recovery passphrase")
        .map(|p| p.guid)
        .collect())
}

fn cryptsetup_accepts(image: &Path, password: &str) -> StepResult<bool> {
    external::cryptsetup_accepts(image, ToolSecret::RecoveryPassword(password))
        .map_err(because("an answer from cryptsetup"))
}

/// dislocker 0.7.3 (Debian's) stretches the password against the *first*
/// recovery-password protector only and aborts when its MAC fails (seen with `-vvvv`: one
/// "Stretching", "The MACs don't match", abort); newer dislocker tries each. When the key
/// is not the first, dislocker judges a copy of the image whose earlier recovery-password
/// protectors are removed: the key's own protector entry, the FVEK entry and every data
/// sector stay byte for byte the device's; the copy's metadata validation is re-sealed
/// under the VMK the password opens. Returns the image to give dislocker and how many
/// protectors the copy lacks (0: the device's own image).
fn image_for_dislocker(image: &Path, password: &str, dir: &Path) -> StepResult<(PathBuf, usize)> {
    use bitlocker::fve::{Image, Secret};
    let file = std::fs::File::open(image).map_err(because("the volume image"))?;
    let mut parsed = Image::open(&file).map_err(because("a readable volume image"))?;
    let recovery: Vec<KeyProtectorId> = parsed
        .protectors()
        .into_iter()
        .filter(|p| p.protection == 0x0800)
        .map(|p| p.id)
        .collect();
    let Ok(pw) = bitlocker::RecoveryPassword::parse(password) else {
        return Ok((image.to_path_buf(), 0));
    };
    // A key our reader refuses is left to dislocker to refuse on the device's own image.
    let Ok(unlocked) = parsed.unlock(Secret::RecoveryPassword(&pw)) else {
        return Ok((image.to_path_buf(), 0));
    };
    let Some(mine) = unlocked.unlocked_by() else {
        return Ok((image.to_path_buf(), 0));
    };
    if recovery.first() == Some(&mine) {
        return Ok((image.to_path_buf(), 0));
    }
    let copy = dir.join("first-recovery-protector.img");
    std::fs::copy(image, &copy).map_err(because("a copy of the volume image"))?;
    let earlier: Vec<KeyProtectorId> = recovery
        .iter()
        .take_while(|id| **id != mine)
        .copied()
        .collect();
    for id in &earlier {
        parsed
            .remove_protector(*id)
            .map_err(because("the protector removed from the copy"))?;
    }
    parsed
        .write_metadata(&copy, unlocked.vmk())
        .map_err(because("the copy's metadata written"))?;
    Ok((copy, earlier.len()))
}

/// dislocker decrypts the volume with `password` and the data is what the harness wrote;
/// the note says when dislocker was given a copy (see [`image_for_dislocker`]).
fn dislocker_matches(volume: JudgedVolume<'_>, password: &str) -> StepResult<Option<String>> {
    let dir = tempfile::tempdir().map_err(because("a temporary directory"))?;
    let out = dir.path().join("decrypted.img");
    let (image, removed) = image_for_dislocker(volume.image, password, dir.path())?;
    let outcome =
        external::dislocker_decrypts(&image, ToolSecret::RecoveryPassword(password), &out)
            .map_err(because("an answer from dislocker-file"))?;
    let last_line = |log: &str| log.lines().last().unwrap_or("").to_string();
    ensure(
        outcome.decrypted,
        "the volume decrypted",
        format!("no decrypted volume: {}", last_line(&outcome.log)),
    )?;
    let data = std::fs::read(&out).map_err(because("the decrypted volume"))?;
    let got = hex::encode(Sha256::digest(&data));
    let want = hex::encode(volume.data_sha256);
    ensure(
        got == want,
        format!("data with SHA-256 {want} (what the harness wrote)"),
        format!("SHA-256 {got}"),
    )?;
    Ok((removed > 0).then(|| {
        format!(
            "judged on a copy without the {removed} earlier recovery-password protector(s): \
             dislocker 0.7.3 tries only the first"
        )
    }))
}
