//! Devices: the measured-boot model, devices booted from real logs, the machine (a device on
//! its own swtpm with a BitLocker volume), [`predict`] (will a change on a real log cause
//! recovery? a real TPM decides) and [`replay`] (a log extended into a real TPM).
//!
//! **The only crate that joins the TPM (`swtpm`), the event log (`eventlog`) and BitLocker
//! (`bitlocker`)**: those three know nothing of each other (Cargo enforces it: the harness's
//! `workspace_edges` test).
//!
//! The measured-boot model: a device is data; its boot is a list of TCG events; its PCRs are
//! predicted from those events.
//!
//! [`Device::events`] lists, in boot order, the events a boot of this device extends (with
//! their event data, as the firmware and Windows boot manager would log them). The TPM layer
//! extends exactly these into a real TPM and writes the [`EventLog`]; [`Device::predict_pcrs`]
//! is the software hash chain over the same measurements. [`Change`] names the changes that
//! trigger (or should not trigger) BitLocker recovery; `device.clone().with(change)` predicts
//! a change before it is applied, and [`explain`] says which events moved which PCR.
//!
//! # PCR map
//!
//! Sources: TCG PC Client Platform Firmware Profile (PFP) 1.04 s3.3.4 and s10; EDK2
//! `Tcg2Dxe.c` for ordering; domain.md for what Windows binds to.
//!
//! | PCR | UEFI boot ([`BootMode::Uefi`]) | legacy boot ([`BootMode::Bios`]) |
//! |---|---|---|
//! | 0 | EV_S_CRTM_VERSION, EV_EFI_PLATFORM_FIRMWARE_BLOB2 (firmware image) | EV_S_CRTM_VERSION, EV_POST_CODE (BIOS image) |
//! | 1 | EV_EFI_VARIABLE_BOOT: BootOrder, Boot#### | EV_PLATFORM_CONFIG_FLAGS: boot order |
//! | 2 | EV_EFI_BOOT_SERVICES_DRIVER per option ROM (code hash) | EV_EVENT_TAG per option ROM (code hash; no signer) |
//! | 3 | separator only | separator only |
//! | 4 | EV_EFI_ACTION "Calling EFI Application from Boot Option"; EV_EFI_BOOT_SERVICES_APPLICATION (boot manager) | EV_ACTION "Calling INT 19h"; EV_IPL "MBR boot code" |
//! | 5 | EV_EFI_GPT_EVENT | EV_IPL_PARTITION_DATA: the MBR partition table |
//! | 6 | separator only | separator only |
//! | 7 | EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot, PK, KEK, db, dbx; separator; EV_EFI_VARIABLE_AUTHORITY once per db certificate that verified a loaded image | separator only |
//! | 8 | - | EV_IPL "NTFS boot sector" |
//! | 9 | - | EV_IPL "NTFS boot block" |
//! | 10 | - | EV_IPL "bootmgr" (the boot manager's code) |
//! | 11 | EV_EVENT_TAG: the BCD settings BitLocker validates (see below) | same |
//! | 12 | EV_COMPACT_HASH per OS file the loader measures | same |
//!
//! Separators go into PCR 0-6 at ReadyToBoot after the boot-option action, and into PCR 7
//! after dbx, as EDK2 does; under legacy boot, into 0-7 before the IPL.
//!
//! A UEFI boot's log is crypto-agile (SHA-1 + SHA-256); a BIOS boot's log is what a BIOS
//! writes, `TCG_PCR_EVENT` records in SHA-1 only ([`Device::measured_boot`]), so a BIOS
//! machine replays and seals in the SHA-1 bank.
//!
//! # Modelling choices
//!
//! - **BCD validation.** BitLocker always validates security-sensitive BCD settings such as
//!   boot debugging (`bootdebug`, 0x16000010). We model that by measuring the validated
//!   settings into PCR 11 as EV_EVENT_TAG events (`bootdebug=off`, ...) before the unseal
//!   point ([`Device::unseal_index`]), so the TPM itself enforces them under every profile
//!   (PCR 11 is in all three). BCD is *not* measured into PCR 5, so a BCD change moves PCR
//!   11 only. (EV_EVENT_TAG rather than EV_IPL: tpm2-tools 5.4 warns on EV_IPL in PCR 11.)
//! - **Legacy IPL stages** (PCR 4, 8, 9, 10) are EV_IPL events whose data is a string naming
//!   the stage and whose digest is the stage's code, in a SHA-1 log (tpm2-tools prints such
//!   data as a string and, in the SHA-1 format, checks no EV_IPL digest against its data).
//!   Legacy option ROMs (PCR 2) stay EV_EVENT_TAG naming the ROM.
//! - **Boot order.** `bcdedit /set {fwbootmgr} displayorder` writes the firmware's BootOrder
//!   variable, so [`Change::BcdBootOrder`] changes PCR 1 (UEFI) and nothing else.
//! - **Images** are byte strings standing in for PE files; the "Authenticode hash" is the
//!   hash of those bytes. Signers are [`Signer`]s whose certificate bytes are derived from
//!   their names.
//! - **Events before the unseal point**: everything up to and including the PCR 11 events.
//!   The OS files (PCR 12) come after it.

mod change;
mod explain;
mod logged;
pub mod machine;
pub mod predict;
mod profile;
pub mod real_firmware;
pub mod replay;

pub use change::{Change, ChangeError, ChangeKind, RomSigner, TpmEffect};
pub use explain::{describe_event, explain, explain_boots, Explanation, PcrDifference};
pub use logged::{log_change, MeasuredBoot, RealLog};
pub use profile::Profile;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::{uuid, Uuid};

use eventlog::data::{self, GptPartition};
use eventlog::tcg::TcgLog;
use eventlog::{Event, EventLog, EventType, Pcrs};

/// Who signed an image (and so which db certificate verified it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signer {
    /// Microsoft Windows Production PCA 2011: signs Windows' own boot code.
    WindowsPca2011,
    /// Microsoft Corporation UEFI CA 2011: signs third-party option ROMs, shim, etc.
    MicrosoftUefiCa,
    /// Windows UEFI CA 2023: the replacement for the Windows PCA 2011.
    WindowsUefiCa2023,
    /// Any other certificate, by name.
    Other(String),
    /// No signature (a legacy option ROM, or a UEFI one nobody signed): never in db, so
    /// no authority event in PCR 7. The model measures its code into PCR 2 all the same
    /// (whether a firmware measures an image that then fails Secure Boot verification is
    /// the firmware's choice; ARCHITECTURE.md, "Modelling choices").
    Unsigned,
}

impl Signer {
    /// The certificate's name.
    pub fn name(&self) -> &str {
        match self {
            Self::WindowsPca2011 => "Microsoft Windows Production PCA 2011",
            Self::MicrosoftUefiCa => "Microsoft Corporation UEFI CA 2011",
            Self::WindowsUefiCa2023 => "Windows UEFI CA 2023",
            Self::Other(n) => n,
            Self::Unsigned => "(unsigned)",
        }
    }

    /// Stand-in certificate bytes (a real db holds DER X.509; ours are derived from the name
    /// so they are stable and distinct).
    pub fn certificate(&self) -> Vec<u8> {
        let mut v = b"X509:CN=".to_vec();
        v.extend_from_slice(self.name().as_bytes());
        v
    }
}

/// How the machine boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// Native UEFI.
    Uefi,
    /// BIOS or UEFI CSM (legacy).
    Bios,
}

/// A boot image (boot manager, OS loader) or an option ROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// File name, e.g. `bootmgfw.efi`.
    pub name: String,
    /// Stand-in for the PE file; its hash is the measured Authenticode hash.
    #[serde(with = "hex::serde")]
    pub content: Vec<u8>,
    /// Who signed it.
    pub signer: Signer,
}

impl Image {
    fn new(name: &str, content: &str, signer: Signer) -> Self {
        Self {
            name: name.into(),
            content: content.as_bytes().to_vec(),
            signer,
        }
    }

    /// Replaces the content with a new, deterministic version.
    fn bump(&mut self, why: &str) {
        let mut h = Sha256::new();
        h.update(&self.content);
        h.update(why.as_bytes());
        self.content = h.finalize().to_vec();
    }
}

/// Platform firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// Version string (EV_S_CRTM_VERSION).
    pub version: String,
    /// Firmware image bytes (measured as the firmware blob).
    #[serde(with = "hex::serde")]
    pub image: Vec<u8>,
}

/// A Boot#### variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// The #### number.
    pub number: u16,
    /// Description, e.g. "Windows Boot Manager".
    pub description: String,
    /// File path of the loader on its device.
    pub path: String,
}

/// Platform configuration measured into PCR 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformConfig {
    /// BootOrder.
    pub boot_order: Vec<u16>,
    /// Boot#### entries.
    pub boot_entries: Vec<BootEntry>,
}

/// Secure Boot state and databases (PCR 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureBoot {
    /// The SecureBoot variable.
    pub enabled: bool,
    /// Platform key owner.
    pub pk: Signer,
    /// KEK certificates.
    pub kek: Vec<Signer>,
    /// db certificates.
    pub db: Vec<Signer>,
    /// dbx: revoked image hashes.
    pub dbx: Vec<[u8; 32]>,
}

/// Boot configuration data: the settings BitLocker validates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bcd {
    /// `bootdebug` (0x16000010), always validated.
    pub bootdebug: bool,
    /// `testsigning` (0x16000049): validated too (security-sensitive).
    pub testsigning: bool,
}

impl Bcd {
    /// The validated settings as measured into PCR 11, in a fixed order.
    pub fn validated_settings(&self) -> Vec<String> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        vec![
            format!("bootdebug={}", on_off(self.bootdebug)),
            format!("testsigning={}", on_off(self.testsigning)),
        ]
    }
}

/// The boot disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// GPT disk GUID.
    #[serde(with = "uuid_str")]
    pub disk_guid: Uuid,
    /// Last LBA of the disk.
    pub last_lba: u64,
    /// GPT partitions, as (name, type GUID, unique GUID, first LBA, last LBA).
    pub partitions: Vec<Partition>,
    /// MBR boot code (legacy PCR 4).
    #[serde(with = "hex::serde")]
    pub mbr_code: Vec<u8>,
    /// NTFS boot sector (legacy PCR 8).
    #[serde(with = "hex::serde")]
    pub ntfs_boot_sector: Vec<u8>,
    /// NTFS boot block (legacy PCR 9).
    #[serde(with = "hex::serde")]
    pub ntfs_boot_block: Vec<u8>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Name.
    pub name: String,
    /// Type GUID.
    #[serde(with = "uuid_str")]
    pub type_guid: Uuid,
    /// Unique GUID.
    #[serde(with = "uuid_str")]
    pub unique_guid: Uuid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA.
    pub last_lba: u64,
}

/// An OS file the loader measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsFile {
    /// Path, e.g. `\Windows\System32\winload.efi`.
    pub name: String,
    /// Stand-in content.
    #[serde(with = "hex::serde")]
    pub content: Vec<u8>,
}

/// A simulated machine: everything its boot measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// UEFI or legacy boot.
    pub boot_mode: BootMode,
    /// Platform firmware (PCR 0).
    pub firmware: Firmware,
    /// Platform configuration (PCR 1).
    pub platform: PlatformConfig,
    /// Option ROMs (PCR 2; their signers' authorities in PCR 7).
    pub option_roms: Vec<Image>,
    /// Secure Boot (PCR 7).
    pub secure_boot: SecureBoot,
    /// Windows Boot Manager (PCR 4; legacy PCR 10; authority in PCR 7).
    pub boot_manager: Image,
    /// Boot configuration data (PCR 11).
    pub bcd: Bcd,
    /// The boot disk (PCR 5; legacy PCR 4, 5, 8, 9).
    pub disk: Disk,
    /// OS files the loader measures (PCR 12; in no profile).
    pub os_files: Vec<OsFile>,
    /// When set, the device boots this real measured-boot log instead of the model above
    /// ([`Device::from_real_log`]); changes edit the log.
    #[serde(skip)]
    pub real_log: Option<RealLog>,
}

const EFI_SYSTEM_PARTITION: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
const BASIC_DATA_PARTITION: Uuid = uuid!("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7");
/// Base address we log for the firmware volume.
const FIRMWARE_BASE: u64 = 0xFF00_0000;
/// Tagged-event ID we use for BCD settings in PCR 11 (ours; no registry assigns one).
pub const BCD_TAG_ID: u32 = 0x4243_4400; // "\0DCB"
/// The EV_ACTION a BIOS logs in PCR 4 before it boots from a disk (PFP s10.4.4).
pub const ACTION_CALLING_INT_19H: &str = "Calling INT 19h";

impl Default for Device {
    /// A reference machine: UEFI with Secure Boot and Microsoft's db, a Windows boot manager
    /// and one onboard option ROM, all signed by the Windows PCA 2011, so its default
    /// profile is 7,11 (domain.md, "PCR 7 binding").
    fn default() -> Self {
        Self {
            boot_mode: BootMode::Uefi,
            firmware: Firmware {
                version: "SimFirmware 1.0.0".into(),
                image: b"simulated firmware volume 1.0.0".to_vec(),
            },
            platform: PlatformConfig {
                boot_order: vec![0, 1],
                boot_entries: vec![
                    BootEntry {
                        number: 0,
                        description: "Windows Boot Manager".into(),
                        path: r"\EFI\Microsoft\Boot\bootmgfw.efi".into(),
                    },
                    BootEntry {
                        number: 1,
                        description: "UEFI: DVD Drive".into(),
                        path: r"\EFI\BOOT\BOOTX64.EFI".into(),
                    },
                ],
            },
            option_roms: vec![Image::new(
                "onboard-nic.rom",
                "onboard NIC UNDI driver 1.0",
                Signer::WindowsPca2011,
            )],
            secure_boot: SecureBoot {
                enabled: true,
                pk: Signer::Other("OEM Platform Key".into()),
                kek: vec![Signer::Other("Microsoft Corporation KEK CA 2011".into())],
                db: vec![Signer::WindowsPca2011, Signer::MicrosoftUefiCa],
                dbx: vec![Sha256::digest(b"revoked bootmgr 1").into()],
            },
            boot_manager: Image::new(
                "bootmgfw.efi",
                "Windows Boot Manager 10.0.19041.1",
                Signer::WindowsPca2011,
            ),
            bcd: Bcd {
                bootdebug: false,
                testsigning: false,
            },
            disk: Disk {
                disk_guid: uuid!("5a3e1f0c-2b7d-4c8e-9f10-112233445566"),
                last_lba: 0x3A38_602F,
                partitions: vec![
                    Partition {
                        name: "EFI system partition".into(),
                        type_guid: EFI_SYSTEM_PARTITION,
                        unique_guid: uuid!("0b1c2d3e-4f50-4162-8374-8596a7b8c9d0"),
                        first_lba: 2048,
                        last_lba: 206_847,
                    },
                    Partition {
                        name: "Basic data partition".into(),
                        type_guid: BASIC_DATA_PARTITION,
                        unique_guid: uuid!("1c2d3e4f-5061-4273-8485-96a7b8c9d0e1"),
                        first_lba: 239_616,
                        last_lba: 0x3A38_5FFF,
                    },
                ],
                mbr_code: b"simulated MBR boot code".to_vec(),
                ntfs_boot_sector: {
                    let mut s = vec![0u8; 512];
                    s[3..11].copy_from_slice(b"-FVE-FS-");
                    s[510] = 0x55;
                    s[511] = 0xAA;
                    s
                },
                ntfs_boot_block: b"simulated NTFS boot block".to_vec(),
            },
            os_files: vec![
                OsFile {
                    name: r"\Windows\System32\winload.efi".into(),
                    content: b"winload 10.0.19041.1".to_vec(),
                },
                OsFile {
                    name: r"\Windows\System32\ntoskrnl.exe".into(),
                    content: b"ntoskrnl 10.0.19041.1".to_vec(),
                },
            ],
            real_log: None,
        }
    }
}

/// Tracks which db certificates have been logged as authorities (once each, PFP s3.3.4.8).
struct Authorities {
    logged: Vec<Signer>,
}

impl Authorities {
    fn event_for(&mut self, sb: &SecureBoot, signer: &Signer) -> Option<Event> {
        // Only when Secure Boot verified the image against db, and only once per cert.
        if !sb.enabled || !sb.db.contains(signer) || self.logged.contains(signer) {
            return None;
        }
        self.logged.push(signer.clone());
        let sig = data::efi_signature_data(&data::MICROSOFT_OWNER, &signer.certificate());
        Some(Event::of_data(
            7,
            EventType::EV_EFI_VARIABLE_AUTHORITY,
            data::uefi_variable_data(&data::EFI_IMAGE_SECURITY_DATABASE, "db", &sig),
        ))
    }
}

impl Device {
    /// A device whose every boot is `log` (see [`RealLog`]); the model fields keep their
    /// defaults and are not measured.
    pub fn from_real_log(source: impl Into<String>, log: std::sync::Arc<TcgLog>) -> Self {
        Self {
            real_log: Some(RealLog::new(source, log)),
            ..Self::default()
        }
    }

    /// A BIOS machine (`profile: legacy`): the reference machine booting in legacy mode, with
    /// no Secure Boot, an unsigned legacy option ROM and Windows' BIOS boot manager
    /// (`\\bootmgr`) loaded by the MBR, NTFS boot sector and boot block.
    pub fn legacy_bios() -> Self {
        let uefi = Self::default();
        Self {
            boot_mode: BootMode::Bios,
            firmware: Firmware {
                version: "SimBIOS 1.0.0".into(),
                image: b"simulated BIOS image 1.0.0".to_vec(),
            },
            option_roms: vec![Image::new(
                "onboard-nic.rom",
                "onboard NIC PXE option ROM 1.0",
                Signer::Unsigned,
            )],
            secure_boot: SecureBoot {
                enabled: false,
                ..uefi.secure_boot
            },
            boot_manager: Image::new(
                "bootmgr",
                "Windows Boot Manager (BIOS) 10.0.19041.1",
                Signer::WindowsPca2011,
            ),
            disk: Disk {
                partitions: vec![
                    Partition {
                        name: "System Reserved".into(),
                        type_guid: BASIC_DATA_PARTITION,
                        unique_guid: Uuid::nil(),
                        first_lba: 2048,
                        last_lba: 1_026_047,
                    },
                    Partition {
                        name: "Windows".into(),
                        type_guid: BASIC_DATA_PARTITION,
                        unique_guid: Uuid::nil(),
                        first_lba: 1_026_048,
                        last_lba: 0x3A38_5FFF,
                    },
                ],
                ..uefi.disk
            },
            ..uefi
        }
    }

    /// What a boot of this device measures: the real log if it has one, else the model's
    /// events (up to [`Device::unseal_index`] before the unseal): a crypto-agile SHA-1 +
    /// SHA-256 log for UEFI, a SHA-1 `TCG_PCR_EVENT` log for BIOS (so a BIOS machine seals
    /// in SHA-1).
    pub fn measured_boot(&self) -> MeasuredBoot {
        match &self.real_log {
            Some(real) => real.measured_boot(),
            None => {
                let log = self.event_log();
                MeasuredBoot {
                    unseal_index: self.unseal_index().min(log.events.len()),
                    log: match self.boot_mode {
                        BootMode::Uefi => TcgLog::from(&log),
                        // A BIOS writes TCG_PCR_EVENT records: SHA-1 only.
                        BootMode::Bios => TcgLog::sha1_format(&log),
                    },
                }
            }
        }
    }

    /// The TCG events a boot of this device extends, in boot order, with event data.
    pub fn events(&self) -> Vec<Event> {
        match self.boot_mode {
            BootMode::Uefi => self.uefi_events(),
            BootMode::Bios => self.bios_events(),
        }
    }

    /// Index into [`Device::events`] where Windows unseals the VMK: the events before it
    /// (through the PCR 11 BCD events) are measured before the unseal.
    pub fn unseal_index(&self) -> usize {
        let events = self.events();
        events
            .iter()
            .rposition(|e| e.pcr == 11)
            .map_or(events.len(), |i| i + 1)
    }

    /// The event log a boot writes.
    pub fn event_log(&self) -> EventLog {
        EventLog::new(self.events())
    }

    /// The PCR values after a boot: the hash chain over [`Device::events`], from reset.
    pub fn predict_pcrs(&self) -> Pcrs {
        self.event_log().replay()
    }

    /// The validation profile Windows would choose (domain.md): legacy boot -> Legacy;
    /// UEFI with Secure Boot and all early boot code (option ROMs, boot manager) signed by
    /// the Windows PCA 2011 -> 7,11; otherwise 0,2,4,11.
    pub fn default_profile(&self) -> Profile {
        if self.boot_mode == BootMode::Bios {
            return Profile::Legacy;
        }
        let pca = |i: &Image| i.signer == Signer::WindowsPca2011;
        if self.secure_boot.enabled && self.option_roms.iter().all(pca) && pca(&self.boot_manager) {
            Profile::SecureBoot7_11
        } else {
            Profile::Uefi0_2_4_11
        }
    }

    /// This device after `change` (for predictions: `device.clone().with(change)`).
    pub fn with(mut self, change: &Change) -> Result<Self, ChangeError> {
        self.apply(change)?;
        Ok(self)
    }

    fn crtm_event(&self) -> Event {
        Event::of_data(
            0,
            EventType::EV_S_CRTM_VERSION,
            data::utf16z(&self.firmware.version),
        )
    }

    fn bcd_events(&self) -> Vec<Event> {
        self.bcd
            .validated_settings()
            .iter()
            .map(|s| {
                Event::of_data(
                    11,
                    EventType::EV_EVENT_TAG,
                    data::tagged_event(BCD_TAG_ID, s.as_bytes()),
                )
            })
            .collect()
    }

    fn os_file_events(&self) -> Vec<Event> {
        self.os_files
            .iter()
            .map(|f| {
                // EV_COMPACT_HASH: the data is the file's hash, the digest the hash of that.
                let h: [u8; 32] = Sha256::digest(&f.content).into();
                Event::of_data(12, EventType::EV_COMPACT_HASH, h.to_vec())
            })
            .collect()
    }

    fn gpt_bytes(&self) -> Vec<u8> {
        let parts: Vec<GptPartition> = self
            .disk
            .partitions
            .iter()
            .map(|p| GptPartition {
                type_guid: p.type_guid,
                unique_guid: p.unique_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attributes: 0,
                name: p.name.clone(),
            })
            .collect();
        data::gpt_event(&self.disk.disk_guid, self.disk.last_lba, &parts)
    }

    fn uefi_events(&self) -> Vec<Event> {
        let sb = &self.secure_boot;
        let mut ev = vec![
            self.crtm_event(),
            Event::measured(
                0,
                EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2,
                data::firmware_blob2("Firmware", FIRMWARE_BASE, self.firmware.image.len() as u64),
                &self.firmware.image,
            ),
        ];
        // PCR 7: Secure Boot policy, then its separator (EDK2 order).
        let certs =
            |list: &[Signer]| -> Vec<Vec<u8>> { list.iter().map(Signer::certificate).collect() };
        let lists = [
            (
                data::EFI_GLOBAL_VARIABLE,
                "SecureBoot",
                vec![u8::from(sb.enabled)],
            ),
            (
                data::EFI_GLOBAL_VARIABLE,
                "PK",
                data::efi_signature_lists(
                    &data::EFI_CERT_X509,
                    &data::MICROSOFT_OWNER,
                    &certs(std::slice::from_ref(&sb.pk)),
                ),
            ),
            (
                data::EFI_GLOBAL_VARIABLE,
                "KEK",
                data::efi_signature_lists(
                    &data::EFI_CERT_X509,
                    &data::MICROSOFT_OWNER,
                    &certs(&sb.kek),
                ),
            ),
            (
                data::EFI_IMAGE_SECURITY_DATABASE,
                "db",
                data::efi_signature_lists(
                    &data::EFI_CERT_X509,
                    &data::MICROSOFT_OWNER,
                    &certs(&sb.db),
                ),
            ),
            (
                data::EFI_IMAGE_SECURITY_DATABASE,
                "dbx",
                data::efi_signature_lists(
                    &data::EFI_CERT_SHA256,
                    &data::MICROSOFT_OWNER,
                    &sb.dbx.iter().map(|h| h.to_vec()).collect::<Vec<_>>(),
                ),
            ),
        ];
        for (guid, name, value) in &lists {
            ev.push(Event::of_data(
                7,
                EventType::EV_EFI_VARIABLE_DRIVER_CONFIG,
                data::uefi_variable_data(guid, name, value),
            ));
        }
        ev.push(Event::separator(7));
        // PCR 1: boot variables; EDK2 measures VariableData only.
        let order: Vec<u8> = self
            .platform
            .boot_order
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect();
        ev.push(Event::measured(
            1,
            EventType::EV_EFI_VARIABLE_BOOT,
            data::uefi_variable_data(&data::EFI_GLOBAL_VARIABLE, "BootOrder", &order),
            &order,
        ));
        for n in &self.platform.boot_order {
            if let Some(b) = self.platform.boot_entries.iter().find(|b| b.number == *n) {
                let opt =
                    data::efi_load_option(true, &b.description, &data::file_device_path(&b.path));
                ev.push(Event::measured(
                    1,
                    EventType::EV_EFI_VARIABLE_BOOT,
                    data::uefi_variable_data(
                        &data::EFI_GLOBAL_VARIABLE,
                        &format!("Boot{n:04X}"),
                        &opt,
                    ),
                    &opt,
                ));
            }
        }
        // PCR 2 (+ PCR 7 authorities): option ROM drivers, as they load.
        let mut auth = Authorities { logged: Vec::new() };
        for (i, rom) in self.option_roms.iter().enumerate() {
            ev.extend(auth.event_for(sb, &rom.signer));
            let path = data::file_device_path(&rom.name);
            ev.push(Event::measured(
                2,
                EventType::EV_EFI_BOOT_SERVICES_DRIVER,
                data::image_load_event(
                    0x8000_0000 + 0x10_0000 * i as u64,
                    rom.content.len() as u64,
                    0,
                    &path,
                ),
                &rom.content,
            ));
        }
        // ReadyToBoot: the boot-option action in PCR 4, separators in 0-6.
        ev.push(Event::of_data(
            4,
            EventType::EV_EFI_ACTION,
            data::ACTION_CALLING_BOOT_OPTION.as_bytes().to_vec(),
        ));
        ev.extend((0..=6).map(Event::separator));
        // PCR 5: the GPT of the boot disk, when the boot option's device is opened.
        ev.push(Event::of_data(
            5,
            EventType::EV_EFI_GPT_EVENT,
            self.gpt_bytes(),
        ));
        // The boot manager: its authority (PCR 7), then the image (PCR 4).
        ev.extend(auth.event_for(sb, &self.boot_manager.signer));
        let path = data::file_device_path(r"\EFI\Microsoft\Boot\bootmgfw.efi");
        ev.push(Event::measured(
            4,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION,
            data::image_load_event(
                0x7000_0000,
                self.boot_manager.content.len() as u64,
                0,
                &path,
            ),
            &self.boot_manager.content,
        ));
        // The boot manager validates BCD (PCR 11), unseals, then the loader measures the OS.
        ev.extend(self.bcd_events());
        ev.extend(self.os_file_events());
        // ExitBootServices (PCR 5), after the loader has run.
        for a in [
            data::ACTION_EXIT_BOOT_SERVICES,
            data::ACTION_EXIT_BOOT_SERVICES_OK,
        ] {
            ev.push(Event::of_data(
                5,
                EventType::EV_EFI_ACTION,
                a.as_bytes().to_vec(),
            ));
        }
        ev
    }

    fn bios_events(&self) -> Vec<Event> {
        // An IPL stage as a BIOS and Windows' boot code log it: EV_IPL whose data names the
        // stage (a string, as tpm2_eventlog prints EV_IPL), whose digest is the stage's code.
        let ipl = |pcr: u32, stage: &str, code: &[u8]| {
            Event::measured(pcr, EventType::EV_IPL, stage.as_bytes().to_vec(), code)
        };
        let mut ev = vec![
            self.crtm_event(),
            Event::measured(
                0,
                EventType::EV_POST_CODE,
                b"POST CODE".to_vec(),
                &self.firmware.image,
            ),
        ];
        let order: Vec<u8> = self
            .platform
            .boot_order
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect();
        ev.push(Event::of_data(
            1,
            EventType::EV_PLATFORM_CONFIG_FLAGS,
            order,
        ));
        // Legacy option ROMs carry no signature: the ROM's code only, in PCR 2.
        for rom in &self.option_roms {
            ev.push(Event::measured(
                2,
                EventType::EV_EVENT_TAG,
                data::tagged_event(0, rom.name.as_bytes()),
                &rom.content,
            ));
        }
        // End of POST: separators, then INT 19h loads the MBR (PCR 4) and its partition
        // table (PCR 5); Windows' boot code measures each next stage (PCR 8, 9, 10).
        ev.extend((0..=7).map(Event::separator));
        ev.push(Event::of_data(
            4,
            EventType::EV_ACTION,
            ACTION_CALLING_INT_19H.as_bytes().to_vec(),
        ));
        ev.push(ipl(4, "MBR boot code", &self.disk.mbr_code));
        ev.push(Event::of_data(
            5,
            EventType::EV_IPL_PARTITION_DATA,
            self.mbr_partition_table(),
        ));
        ev.push(ipl(8, "NTFS boot sector", &self.disk.ntfs_boot_sector));
        ev.push(ipl(9, "NTFS boot block", &self.disk.ntfs_boot_block));
        ev.push(ipl(10, "bootmgr", &self.boot_manager.content));
        ev.extend(self.bcd_events());
        ev.extend(self.os_file_events());
        ev
    }

    /// The MBR's partition table (four 16-byte entries), as a BIOS measures it into PCR 5.
    fn mbr_partition_table(&self) -> Vec<u8> {
        let mut table = vec![0u8; 64];
        for (i, (entry, p)) in table
            .chunks_exact_mut(16)
            .zip(&self.disk.partitions)
            .enumerate()
        {
            let lba = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes();
            entry[0] = if i == 0 { 0x80 } else { 0 }; // the first one is active
            entry[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]); // CHS: use the LBA fields
            entry[4] = 0x07; // NTFS (BitLocker keeps the type)
            entry[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
            entry[8..12].copy_from_slice(&lba(p.first_lba));
            entry[12..16].copy_from_slice(&lba(p.last_lba.saturating_sub(p.first_lba) + 1));
        }
        table
    }
}

/// Serde helper: GUIDs as hyphenated strings (uuid's serde feature is not enabled).
mod uuid_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(u: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&u.hyphenated().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = String::deserialize(d)?;
        Uuid::parse_str(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests;
