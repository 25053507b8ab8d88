//! The scenario file's types: one struct per YAML mapping, one enum per closed set.
//!
//! Every mapping denies unknown fields, so a typo is an error with a position, never a
//! silently ignored line. `scenarios/SCHEMA.md` documents the same shape for QA readers and
//! `scenarios/scenario.schema.json` for tools; a test keeps the three in step.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The TPM's answer (`expect.tpm_error`) is the device's own, as its recovery screen reports it.
pub use device::machine::TpmError;
/// A change's name (`change.kind`) and an added ROM's signer are the device crate's: one
/// vocabulary for the scenario files, `eventlog predict --change` and the device model.
pub use device::{ChangeKind, RomSigner};

/// One recovery story: a device (or several), its users, one change (or several), what
/// must follow, and how the user gets back in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique in the catalog: lower-case letters, digits and `-`.
    pub name: String,
    /// What happens, in words a QA reader understands.
    pub description: String,
    /// Free labels for `--filter tag:...`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The one device; a story of several gives `devices` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// Several devices, each with its own TPM, volume and keys (instead of `device`); each
    /// change and the recovery names the one it acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Everyone the story needs: device users and help desk staff.
    pub users: Vec<User>,
    /// The one change (with `expect`); a story of several gives `changes` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// What must follow `change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// Several changes in order, each with what must follow it (instead of `change` and
    /// `expect`); a change before the last that ends on the recovery screen has its own
    /// `recovery`, after which the story goes on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeStep>,
    /// Absent when no recovery follows (`expect.recovery: false`).
    #[serde(default)]
    pub recovery: Option<Recovery>,
    /// Portal-only checks that run besides (or after) the recovery.
    #[serde(default)]
    pub checks: Checks,
    /// One scenario per cell: the file's story on a device of each cell's profile, with
    /// the cell's own `expect` (the loader expands it; an expanded scenario has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matrix: Vec<MatrixCell>,
    /// The file this scenario was read from (not part of the YAML).
    #[serde(skip)]
    pub file: PathBuf,
}

impl Scenario {
    /// The story's changes in order, each with what must follow it: `changes`, or the
    /// single `change` with its `expect` (empty only for a file the loader refuses).
    pub fn steps(&self) -> Vec<(&Change, &Expect)> {
        match (&self.change, &self.expect) {
            (Some(change), Some(expect)) if self.changes.is_empty() => vec![(change, expect)],
            _ => self
                .changes
                .iter()
                .map(|s| (&s.change, &s.expect))
                .collect(),
        }
    }

    /// The last change and what must follow it: what a `recovery` recovers from.
    pub fn last_step(&self) -> Option<(&Change, &Expect)> {
        self.steps().pop()
    }

    /// Whether the story ends on the recovery screen.
    pub fn recovers(&self) -> bool {
        self.last_step().is_some_and(|(_, e)| e.recovery)
    }

    /// Every device of the story: `device`, or `devices` in order.
    pub fn all_devices(&self) -> Vec<&Device> {
        self.device.iter().chain(&self.devices).collect()
    }

    /// The device a change, recovery or check names (`device: NAME`); with no name, the
    /// story's only (or first) device. `None` for a name no device has.
    pub fn device_named(&self, name: Option<&str>) -> Option<&Device> {
        let mut all = self.all_devices().into_iter();
        match name {
            None => all.next(),
            Some(name) => all.find(|d| d.name.eq_ignore_ascii_case(name)),
        }
    }

    /// The position of that device in [`Scenario::all_devices`].
    pub fn device_index(&self, name: Option<&str>) -> Option<usize> {
        let all = self.all_devices();
        match name {
            None => (!all.is_empty()).then_some(0),
            Some(name) => all.iter().position(|d| d.name.eq_ignore_ascii_case(name)),
        }
    }

    /// The device the story's recovery acts on (`recovery.device`, or the only device).
    pub fn recovery_device(&self) -> Option<&Device> {
        self.device_named(self.recovery.as_ref().and_then(|r| r.device.as_deref()))
    }

    /// How the user gets back in after the `i`-th change: its own `recovery` in `changes`,
    /// or for the last change the top-level `recovery`.
    pub fn recovery_after(&self, i: usize) -> Option<&Recovery> {
        let own = self.changes.get(i).and_then(|c| c.recovery.as_ref());
        let last = i + 1 == self.steps().len();
        own.or(if last { self.recovery.as_ref() } else { None })
    }

    /// Every recovery of the story with the change it follows, in order.
    pub fn recoveries(&self) -> Vec<(usize, &Recovery)> {
        (0..self.steps().len())
            .filter_map(|i| self.recovery_after(i).map(|r| (i, r)))
            .collect()
    }

    /// `user`'s sign-ins on `device`: `sign_ins_on` names the device, `sign_ins` are on
    /// the story's only device.
    pub fn sign_ins(&self, user: &User, device: &Device) -> Vec<SignInKind> {
        if user.sign_ins_on.is_empty() {
            return user.sign_ins.clone();
        }
        user.sign_ins_on
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&device.name))
            .map(|(_, kinds)| kinds.clone())
            .unwrap_or_default()
    }

    /// Whether `user` signed in locally on `device` (what self-service needs to show its key).
    pub fn signed_in_locally(&self, user: &User, device: &Device) -> bool {
        self.sign_ins(user, device).contains(&SignInKind::Local)
    }

    /// The language the browser of whoever asks for `r` sends: the requester's own
    /// (`users[].language`), else the one the pages must come in (`recovery.language`),
    /// else the browser's default (English).
    pub fn browser_language(&self, r: &Recovery) -> Option<Language> {
        self.user(&r.requester)
            .and_then(|u| u.language)
            .or(r.language)
    }

    /// The user of that name (case-insensitive, as the portal compares names).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(name))
    }
}

/// The simulated machine and its BitLocker configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// The computer name the agent enrolls with (the help desk's "computer").
    #[serde(default = "default_device_name")]
    pub name: String,
    /// The PCR validation profile the TPM protector is sealed to. Required, except in a
    /// `matrix` file, whose cells give it (the loader checks that it is written).
    #[serde(default = "Profile::unwritten")]
    pub profile: Profile,
    /// Key protectors on the OS volume.
    pub protectors: Vec<ProtectorKind>,
    /// The PIN of a `tpm_pin` protector (required with it, refused without it).
    #[serde(default)]
    pub pin: Option<String>,
    /// How many recovery-password protectors are escrowed (one per volume, OS volume first).
    #[serde(default = "default_recovery_passwords")]
    pub recovery_passwords: u8,
    /// When set, every recovery-password key ID starts with these 8 hex digits, so the
    /// 8-digit lookup matches several keys (the "type all 32 digits" path).
    #[serde(default)]
    pub key_id_prefix: Option<String>,
    /// Whether the agent escrows the TPM lockout authorization (needed for Manage TPM).
    #[serde(default = "default_true")]
    pub escrow_tpm_lockout: bool,
    /// Failed authorizations before the TPM locks out (Windows: 32).
    #[serde(default = "default_lockout_threshold")]
    pub lockout_threshold: u32,
    /// Seconds after which the TPM forgets one counted failure (its DA `recoveryTime`,
    /// set with TPM2_DictionaryAttackParameters at provisioning; Windows: 600). The TPM
    /// applies it in real time, so a story's "next day" is a few seconds here.
    #[serde(default = "default_failure_forgotten_secs")]
    pub failure_forgotten_secs: u32,
    /// A real measured-boot log (TCG binary format, e.g. `C:\Windows\Logs\MeasuredBoot\*.log`)
    /// the device boots instead of the synthetic model; relative to the scenario file.
    #[serde(default)]
    pub event_log: Option<PathBuf>,
    /// Sector cipher of the OS volume (default: AES-XTS-128, the Windows 10+ default).
    #[serde(default)]
    pub volume_cipher: VolumeCipher,
    /// Real firmware in the loop: every boot is a real boot of this firmware under QEMU on
    /// the device's swtpm (`device::real_firmware`), instead of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<RealFirmwareKind>,
    /// The parsed `event_log`, filled in by the loader (not part of the YAML).
    #[serde(skip)]
    pub real_log: Option<std::sync::Arc<eventlog::tcg::TcgLog>>,
}

fn default_device_name() -> String {
    "PC-0001".to_string()
}
fn default_recovery_passwords() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_lockout_threshold() -> u32 {
    32
}
fn default_failure_forgotten_secs() -> u32 {
    device::machine::WINDOWS_DA.recovery_time_secs
}

/// The real firmware a device boots (`device.firmware`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RealFirmwareKind {
    /// Debian's OVMF (UEFI) with Secure Boot and the Microsoft keys, booting Debian's signed
    /// shim, grub and kernel from a cached boot disk.
    Ovmf,
}

/// PCR validation profiles (windows-itpro-docs defaults), as scenario files name them.
///
/// A projection of [`device::Profile`], which owns the PCR lists: this type only keeps the
/// scenario spelling (`legacy` rather than the device's `0,2,4,8,9,10,11`), so the loader's
/// errors and the JSON Schema list the names QA writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Profile {
    /// UEFI with Secure Boot.
    #[serde(rename = "7,11")]
    SecureBoot,
    /// Native UEFI without Secure Boot binding.
    #[serde(rename = "0,2,4,11")]
    Uefi,
    /// BIOS / CSM: 0, 2, 4, 8, 9, 10, 11.
    #[serde(rename = "legacy")]
    Legacy,
}

impl Profile {
    /// What serde fills in for a `device.profile` the file leaves out; the loader refuses
    /// that outside a `matrix` file and sets each cell's profile inside one.
    fn unwritten() -> Profile {
        Profile::SecureBoot
    }

    /// The device profile this names.
    pub fn device_profile(self) -> device::Profile {
        match self {
            Profile::SecureBoot => device::Profile::SecureBoot7_11,
            Profile::Uefi => device::Profile::Uefi0_2_4_11,
            Profile::Legacy => device::Profile::Legacy,
        }
    }

    /// The PCRs this profile seals to.
    pub fn pcrs(self) -> &'static [u32] {
        self.device_profile().pcrs()
    }

    /// The spelling used in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::SecureBoot => "7,11",
            Profile::Uefi => "0,2,4,11",
            Profile::Legacy => "legacy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectorKind {
    Tpm,
    TpmPin,
    RecoveryPassword,
}

/// The OS volume's sector cipher, spelled as `harness volume create --cipher` takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum VolumeCipher {
    /// Windows 10 1511+ default.
    #[default]
    #[serde(rename = "aes-xts-128")]
    AesXts128,
    #[serde(rename = "aes-xts-256")]
    AesXts256,
    /// AES-CBC with the Elephant diffuser: Windows Vista and 7 (kept by in-place upgrades).
    #[serde(rename = "aes-cbc-elephant-128")]
    AesCbcElephant128,
    #[serde(rename = "aes-cbc-elephant-256")]
    AesCbcElephant256,
}

impl VolumeCipher {
    /// The on-disk method this names.
    pub fn fve_cipher(self) -> bitlocker::fve::Cipher {
        use bitlocker::fve::Cipher;
        match self {
            VolumeCipher::AesXts128 => Cipher::AesXts128,
            VolumeCipher::AesXts256 => Cipher::AesXts256,
            VolumeCipher::AesCbcElephant128 => Cipher::AesCbcElephant128,
            VolumeCipher::AesCbcElephant256 => Cipher::AesCbcElephant256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// `DOMAIN\user`, as the agent reports sign-ins and as the portal account is named.
    pub name: String,
    #[serde(default)]
    pub role: Role,
    /// This user's sign-ins on the device, reported by the agent before the change (a
    /// story of one device).
    #[serde(default)]
    pub sign_ins: Vec<SignInKind>,
    /// This user's sign-ins on each device, by computer name (a story of several devices;
    /// a device not listed has none).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sign_ins_on: std::collections::BTreeMap<String, Vec<SignInKind>>,
    /// The language this user's browser asks for (`Accept-Language`): what the story does.
    /// What the pages must come in is `recovery.language`, an expectation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
}

/// Portal roles a scenario may give (the admin is the harness itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    User,
    Helpdesk,
    AdvancedHelpdesk,
}

impl Role {
    pub fn is_help_desk(self) -> bool {
        matches!(self, Role::Helpdesk | Role::AdvancedHelpdesk)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInKind {
    Local,
    Remote,
}

/// What happens to the machine between the healthy boot and the boot under test.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub kind: ChangeKind,
    /// `lost_pin` only: how many wrong PINs the user types.
    #[serde(default)]
    pub wrong_pins: Option<u32>,
    /// `lost_pin` only: what the user does after the wrong PINs (default: `esc`).
    #[serde(default)]
    pub then: Option<PinAction>,
    /// `option_rom_added` only (and required there): who signed the new ROM.
    #[serde(default)]
    pub signer: Option<RomSigner>,
    /// BitLocker suspended before the change (Windows Update's `Suspend-BitLocker
    /// -RebootCount`): the drive opens with a clear key for that many reboots, and the
    /// last of them re-seals and resumes.
    #[serde(default)]
    pub suspend: Option<Suspend>,
    /// The device it happens to, by computer name (optional when there is one device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A suspension of BitLocker protection for a number of reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    /// Reboots before protection resumes (Windows: 1-15; Windows Update uses 1).
    pub reboots: u32,
}

impl Change {
    /// What the lost-PIN user does after the wrong PINs (`esc` unless the file says).
    pub fn pin_action(&self) -> PinAction {
        self.then.unwrap_or(PinAction::Esc)
    }
}

/// What the lost-PIN user does after typing the wrong PINs: an input of the story, never
/// derived from what is expected to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinAction {
    /// Gives up at the PIN prompt (Esc) and takes the recovery screen (a locked-out
    /// device is on it already).
    Esc,
    /// Remembers the PIN and types the right one: it unlocks unless the TPM is locked out.
    RightPin,
}

impl Change {
    /// The device change this scenario change plays (its `kind` with its `signer`); `None`
    /// for kinds that change no measurement and no TPM state (nothing, a plain reboot,
    /// wrong PINs).
    pub fn device_change(&self) -> Option<device::Change> {
        self.kind.change(self.signer)
    }
}

/// One cell of a `matrix`: the story on a device of this profile, and what must follow
/// there (written in the file, never derived from the model).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixCell {
    pub profile: Profile,
    pub expect: Expect,
}

/// One step of a story of several changes: a change and what must follow it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeStep {
    /// Seconds the story waits before this change (really: the TPM forgets failures in
    /// real time, `device.failure_forgotten_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u32>,
    pub change: Change,
    pub expect: Expect,
    /// How the user gets back in when this change ends on the recovery screen (before the
    /// last change: required then, and it must unlock, since the story goes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

/// What must follow the change at the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Whether the device shows the BitLocker recovery screen.
    pub recovery: bool,
    /// The TPM's answer to the device's last unlock attempt.
    pub tpm_error: TpmError,
    /// The profile's PCRs whose values differ from those the key was sealed to.
    #[serde(default)]
    pub changed_pcrs: Vec<u32>,
    /// The TPM's dictionary-attack failure counter after the step (`TPM_PT_LOCKOUT_COUNTER`,
    /// read from the TPM): the wrong PINs it still counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_failed_tries: Option<u32>,
}

/// How the locked-out user gets back in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub via: RecoveryVia,
    /// Who asks the portal: the end user (self-service) or the help desk operator.
    #[serde(rename = "as")]
    pub requester: String,
    /// Help desk only: the end user the operator types (role `helpdesk` must give it).
    #[serde(default)]
    pub end_user: Option<String>,
    /// The reason picked in the form (exact portal value).
    pub reason: Reason,
    /// How many key-ID digits are typed first: 8 or 32 (key requests only).
    #[serde(default)]
    pub key_id_digits: Option<KeyIdDigits>,
    /// What the portal must answer.
    pub answer: Answer,
    /// The language the pages must come in (`<html lang>`; on self-service the Get Key
    /// button's wording too). The browser asks for the requester's `users[].language`, or
    /// for this one when the requester declares none.
    #[serde(default)]
    pub language: Option<Language>,
    /// The device recovered, by computer name (optional when there is one device): the one
    /// the last change acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A language the portal's pages come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    En,
    Ja,
}

impl Language {
    /// The BCP 47 tag (`<html lang>`).
    pub fn tag(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Ja => "ja",
        }
    }

    /// What a browser set to this language sends as `Accept-Language`.
    pub fn accept_language(self) -> &'static str {
        match self {
            Language::En => "en-US,en",
            Language::Ja => "ja-JP,ja",
        }
    }
}

impl Recovery {
    /// The key-ID digits typed first (8 when not given).
    pub fn digits(&self) -> KeyIdDigits {
        self.key_id_digits.unwrap_or(KeyIdDigits::Eight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryVia {
    /// The user at `/SelfService`.
    SelfService,
    /// A help desk operator looks up the key at `/HelpDesk`.
    HelpDesk,
    /// A help desk operator reads the TPM lockout authorization ("Manage TPM"); the device
    /// resets the lockout and the user types the right PIN. No recovery key is used.
    HelpDeskTpmReset,
}

/// Key-ID digits typed: the first 8, or all 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyIdDigits {
    Eight,
    ThirtyTwo,
}

impl KeyIdDigits {
    pub fn count(self) -> usize {
        match self {
            KeyIdDigits::Eight => 8,
            KeyIdDigits::ThirtyTwo => 32,
        }
    }
}

impl Serialize for KeyIdDigits {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.count() as u8)
    }
}

// A visitor rather than `try_from`: the error is raised while the scalar is read, so
// serde_yaml reports the scalar's own line:column (not the enclosing mapping's).
impl<'de> Deserialize<'de> for KeyIdDigits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digits;
        impl serde::de::Visitor<'_> for Digits {
            type Value = KeyIdDigits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("8 or 32")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeyIdDigits, E> {
                match v {
                    8 => Ok(KeyIdDigits::Eight),
                    32 => Ok(KeyIdDigits::ThirtyTwo),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeyIdDigits, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
        }
        deserializer.deserialize_u64(Digits)
    }
}

/// The reasons the portal's forms offer, spelled exactly as the portal expects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Reason {
    // Self-service (ConfigMgr; "filed" is the product's own spelling).
    #[serde(rename = "BIOS/TPM changed")]
    BiosTpmChanged,
    #[serde(rename = "OS filed modified")]
    OsFiledModified,
    #[serde(rename = "Lost PIN/passphrase")]
    LostPinPassphrase,
    // Help desk (MBAM).
    #[serde(rename = "Operating System Boot Order changed")]
    OsBootOrderChanged,
    #[serde(rename = "BIOS changed")]
    BiosChanged,
    #[serde(rename = "Operating System files modified")]
    OsFilesModified,
    #[serde(rename = "Lost Startup key")]
    LostStartupKey,
    #[serde(rename = "Lost PIN")]
    LostPin,
    #[serde(rename = "TPM Reset")]
    TpmReset,
    #[serde(rename = "Lost Passphrase")]
    LostPassphrase,
    #[serde(rename = "Lost Smartcard")]
    LostSmartcard,
    #[serde(rename = "Other")]
    Other,
}

impl Reason {
    /// The exact form value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BiosTpmChanged => "BIOS/TPM changed",
            Reason::OsFiledModified => "OS filed modified",
            Reason::LostPinPassphrase => "Lost PIN/passphrase",
            Reason::OsBootOrderChanged => "Operating System Boot Order changed",
            Reason::BiosChanged => "BIOS changed",
            Reason::OsFilesModified => "Operating System files modified",
            Reason::LostStartupKey => "Lost Startup key",
            Reason::LostPin => "Lost PIN",
            Reason::TpmReset => "TPM Reset",
            Reason::LostPassphrase => "Lost Passphrase",
            Reason::LostSmartcard => "Lost Smartcard",
            Reason::Other => "Other",
        }
    }

    /// Whether the self-service form offers it (otherwise it is a help desk reason).
    pub fn is_self_service(self) -> bool {
        matches!(
            self,
            Reason::BiosTpmChanged | Reason::OsFiledModified | Reason::LostPinPassphrase
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the portal must answer the recovery request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The 48-digit key is shown; typed on the device, it unlocks it.
    KeyShown,
    /// Self-service only: "contact the help desk" (no local sign-in on the device).
    HelpdeskMessage,
    /// "Not found", byte-identical to the answer for a key ID that does not exist.
    Refused,
    /// The 8 digits match several keys: the portal asks for all 32; typed, the key is
    /// shown and unlocks the device.
    SeveralMatches,
    /// The user went idle: the request gets the expiry page (needs `checks.idle_expiry`).
    Expired,
    /// Manage TPM shows the lockout authorization; the device resets the lockout with it
    /// and the user's right PIN unlocks it.
    LockoutAuthShown,
}

/// Portal-only checks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// What the agent does after the key (or lockout value) was shown: `rotate` (the
    /// default) or `keep`.
    #[serde(default)]
    pub after_recovery: Option<AfterRecovery>,
    #[serde(default)]
    pub idle_expiry: Option<IdleExpiry>,
    #[serde(default)]
    pub foreign_key_request: Option<ForeignKeyRequest>,
    /// The audit rows the story's requests leave, every one, in this order (the rows of the
    /// harness's own checking requests may be listed or left out).
    #[serde(default)]
    pub audit: Vec<AuditExpectation>,
    /// Audit rows the story must not leave (e.g. no `shown` row after a refusal); the
    /// harness's own probe rows do not count.
    #[serde(default)]
    pub audit_absent: Vec<AuditExpectation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterRecovery {
    /// Agent check-in lists the shown key; the agent escrows a new one and confirms the
    /// rotation; the old key ID is then "not found" and the old key no longer unlocks.
    Rotate,
    /// The agent does not rotate: the old key still unlocks, the portal still shows it,
    /// and every check-in keeps asking for the rotation.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdleExpiry {
    /// Portal setting `idle_timeout_secs` for this scenario.
    pub idle_secs: u32,
    /// Portal setting `warning_secs`: the countdown the warning shows.
    pub warning_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeyRequest {
    /// A user with no sign-in on the device asks for its key ID: the answer must be
    /// byte-identical to the one for an absent key ID.
    pub as_user: String,
    /// Whose key ID is asked for, by computer name (optional when there is one device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExpectation {
    pub source: AuditSource,
    pub outcome: AuditOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSource {
    SelfService,
    HelpDesk,
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Shown,
    Denied,
    NotFound,
    Ambiguous,
    RateLimited,
    ExpiredSession,
    NotEligible,
}

/// A value's name as scenario files spell it (its serde name, e.g. `policy_failed`): the one
/// spelling reports, step names and comparisons use. For a unit variant, the bare name;
/// for anything else, its JSON.
pub fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}
