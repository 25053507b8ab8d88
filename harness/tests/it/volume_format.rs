//! The BitLocker on-disk format: images the harness writes are opened by cryptsetup (BITLK)
//! and dislocker; images Windows wrote are opened by the harness; malformed images give
//! errors naming the structure and offset.

use std::path::{Path, PathBuf};

use bitlocker::external::{self, ToolSecret};
use bitlocker::fve::{
    BekFile, Cipher, CreatedVolume, FveError, Image, NewProtector, NewVolume, Secret,
};
use bitlocker::{KeyProtectorId, RecoveryPassword};
use rand::SeedableRng;

fn require_tools() {
    assert!(
        external::cryptsetup_available(),
        "cryptsetup not found: install the Debian package cryptsetup-bin (scripts/install-system-deps.sh)"
    );
    assert!(
        external::dislocker_available(),
        "dislocker-file not found: install the Debian package dislocker (scripts/install-system-deps.sh)"
    );
}

fn new_volume(cipher: Cipher, seed: u64) -> CreatedVolume {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    NewVolume {
        size: 2 << 20,
        cipher,
        description: "TEST-PC H: volume_format".into(),
        plaintext: None,
        protectors: vec![
            NewProtector::RecoveryPassword(None),
            NewProtector::Password("correct horse".into()),
            NewProtector::StartupKey,
            NewProtector::Tpm {
                blob: b"opaque TPM2B_PUBLIC|TPM2B_PRIVATE".to_vec(),
            },
            NewProtector::TpmAndPin {
                blob: b"opaque sealed blob".to_vec(),
            },
        ],
    }
    .create(&mut rng)
    .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn recovery_password(v: &CreatedVolume) -> (KeyProtectorId, String) {
    v.protectors
        .iter()
        .find_map(|p| p.recovery_password.clone().map(|pw| (p.id, pw)))
        .unwrap()
}

const WRONG: &str = "111111-111111-111111-111111-111111-111111-111111-111111";

fn check_cipher(cipher: Cipher, seed: u64) {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let v = new_volume(cipher, seed);
    let img = write(dir.path(), "vol.img", &v.image);
    let (rp_id, rp) = recovery_password(&v);

    // bitlkDump lists every protector with our IDs and types.
    let dump = external::cryptsetup_dump(&img).unwrap();
    assert!(
        dump.contains(&v.volume_guid.hyphenated().to_string()),
        "{dump}"
    );
    // cryptsetup's words: the mode, and the key it maps (XTS: both halves; Elephant: the
    // AES key and the sector-key key).
    let (expect_mode, bits) = match cipher {
        Cipher::AesXts128 => ("xts-plain64", "256"),
        Cipher::AesXts256 => ("xts-plain64", "512"),
        Cipher::AesCbcElephant128 => ("cbc-elephant", "256"),
        Cipher::AesCbcElephant256 => ("cbc-elephant", "512"),
        other => panic!("{other:?} is not written"),
    };
    assert!(dump.contains(expect_mode), "{dump}");
    assert!(
        dump.contains(&format!("Cipher key:   \t{bits} bits")),
        "{dump}"
    );
    for p in &v.protectors {
        let guid = p.id.uuid().hyphenated().to_string();
        assert!(dump.contains(&guid), "{guid} missing from:\n{dump}");
    }
    for wording in [
        "VMK protected with recovery passphrase",
        "VMK protected with passphrase",
        "VMK protected with startup key",
        "VMK protected with TPM\n",
        "VMK protected with TPM and PIN",
    ] {
        assert!(dump.contains(wording), "{wording:?} missing from:\n{dump}");
    }

    // cryptsetup: the recovery password, the password and the .BEK open it; a wrong one not.
    assert!(external::cryptsetup_accepts(&img, ToolSecret::RecoveryPassword(&rp)).unwrap());
    assert!(!external::cryptsetup_accepts(&img, ToolSecret::RecoveryPassword(WRONG)).unwrap());
    assert!(external::cryptsetup_accepts(&img, ToolSecret::Password("correct horse")).unwrap());
    let bek = v.protectors.iter().find_map(|p| p.bek.clone()).unwrap();
    let bek_path = write(dir.path(), &bek.file_name(), &bek.to_bytes().unwrap());
    assert!(external::cryptsetup_accepts(&img, ToolSecret::BekFile(&bek_path)).unwrap());

    // dislocker decrypts it to exactly what the harness wrote, and so do we.
    let out = dir.path().join("dislocker.out");
    let o = external::dislocker_decrypts(&img, ToolSecret::RecoveryPassword(&rp), &out).unwrap();
    assert!(o.decrypted, "{}", o.log);
    let dis = std::fs::read(&out).unwrap();
    assert_eq!(dis.len(), v.plaintext_view.len());
    assert!(dis == v.plaintext_view, "dislocker's plaintext differs");
    assert!(dis.starts_with(b"harness BitLocker test volume, sector 0000000000\n"));

    let f = std::fs::File::open(&img).unwrap();
    let image = Image::open(&f).unwrap();
    let pw = RecoveryPassword::parse(&rp).unwrap();
    let u = image.unlock(Secret::RecoveryPassword(&pw)).unwrap();
    assert_eq!(u.unlocked_by(), Some(rp_id));
    assert_eq!(u.cipher(), cipher);
    let mut ours = Vec::new();
    image.decrypt_to(&f, &u, &mut ours).unwrap();
    assert!(ours == v.plaintext_view, "our plaintext differs");
}

#[test]
fn volume_xts128_opens_in_cryptsetup_and_dislocker() {
    check_cipher(Cipher::AesXts128, 1);
}

#[test]
fn volume_xts256_opens_in_cryptsetup_and_dislocker() {
    check_cipher(Cipher::AesXts256, 2);
}

#[test]
fn volume_elephant128_opens_in_cryptsetup_and_dislocker() {
    check_cipher(Cipher::AesCbcElephant128, 7);
}

#[test]
fn volume_elephant256_opens_in_cryptsetup_and_dislocker() {
    check_cipher(Cipher::AesCbcElephant256, 8);
}

/// `harness volume create --cipher aes-cbc-elephant-256` writes a volume dislocker decrypts
/// to the known sectors, and `harness volume unlock --out` agrees.
#[test]
fn volume_cli_creates_an_elephant256_volume_dislocker_reads() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e256.img");
    let o = crate::common::harness()
        .args(["volume", "create", img.to_str().unwrap(), "--size", "2M"])
        .args(["--cipher", "aes-cbc-elephant-256", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cipher"], "aes-cbc-elephant-256");
    let rp = v["protectors"][0]["recovery_password"]
        .as_str()
        .unwrap()
        .to_string();
    let dump = external::cryptsetup_dump(&img).unwrap();
    assert!(dump.contains("cbc-elephant"), "{dump}");
    assert!(external::cryptsetup_accepts(&img, ToolSecret::RecoveryPassword(&rp)).unwrap());
    let dis_out = dir.path().join("dislocker.out");
    let d =
        external::dislocker_decrypts(&img, ToolSecret::RecoveryPassword(&rp), &dis_out).unwrap();
    assert!(d.decrypted, "{}", d.log);
    let ours = dir.path().join("ours.out");
    let o = crate::common::harness()
        .args([
            "volume",
            "unlock",
            img.to_str().unwrap(),
            "--recovery-password",
            &rp,
        ])
        .arg("--out")
        .arg(&ours)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dis = std::fs::read(&dis_out).unwrap();
    assert!(
        dis == std::fs::read(&ours).unwrap(),
        "dislocker and harness differ"
    );
    assert!(dis.starts_with(b"harness BitLocker test volume, sector 0000000000\n"));
    let n = 100;
    assert_eq!(
        &dis[n * 512..(n + 1) * 512],
        &bitlocker::fve::known_sector(n as u64)[..]
    );
}

#[test]
fn volume_rotation_retires_the_old_password_in_cryptsetup() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let v = new_volume(Cipher::AesXts128, 3);
    let img = write(dir.path(), "vol.img", &v.image);
    let (old_id, old) = recovery_password(&v);
    let f = std::fs::File::open(&img).unwrap();
    let mut image = Image::open(&f).unwrap();
    let u = image
        .unlock(Secret::RecoveryPassword(
            &RecoveryPassword::parse(&old).unwrap(),
        ))
        .unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
    let (new_id, new) = image
        .rotate_recovery_password(&u, &mut rng, old_id)
        .unwrap();
    image.write_metadata(&img, u.vmk()).unwrap();

    let dump = external::cryptsetup_dump(&img).unwrap();
    assert!(
        !dump.contains(&old_id.uuid().hyphenated().to_string()),
        "{dump}"
    );
    assert!(
        dump.contains(&new_id.uuid().hyphenated().to_string()),
        "{dump}"
    );
    assert!(!external::cryptsetup_accepts(&img, ToolSecret::RecoveryPassword(&old)).unwrap());
    assert!(
        external::cryptsetup_accepts(&img, ToolSecret::RecoveryPassword(&new.to_string())).unwrap()
    );
    let reopened = Image::open(&std::fs::File::open(&img).unwrap()).unwrap();
    assert!(matches!(
        reopened.unlock(Secret::RecoveryPassword(
            &RecoveryPassword::parse(&old).unwrap()
        )),
        Err(FveError::WrongSecret { .. })
    ));
}

// --- Windows-made images (cryptsetup's BITLK test images) ---

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/bitlk")
}

/// Decompresses a committed image into `dir` with `xz -dc`.
fn windows_image(dir: &Path, name: &str) -> PathBuf {
    let src = data_dir().join(format!("{name}.img.xz"));
    let out = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&src)
        .output()
        .expect("xz not found: install the Debian package xz-utils");
    assert!(out.status.success(), "xz -dc {}", src.display());
    write(dir, &format!("{name}.img"), &out.stdout)
}

/// `key=value` lines of a section of images.conf.
fn conf(name: &str, key: &str) -> String {
    let text = std::fs::read_to_string(data_dir().join("images.conf")).unwrap();
    let section = text
        .split("\n\n")
        .find(|s| s.trim_start().starts_with(&format!("[{name}]")))
        .unwrap();
    section
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn id(s: &str) -> KeyProtectorId {
    s.parse().unwrap()
}

#[test]
fn volume_windows_xts_images_inspect_unlock_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    for (name, cipher) in [
        ("bitlk-aes-xts-128", Cipher::AesXts128),
        ("bitlk-aes-xts-256", Cipher::AesXts256),
        ("bitlk-aes-cbc-128", Cipher::AesCbc128),
    ] {
        let img = windows_image(dir.path(), name);
        let f = std::fs::File::open(&img).unwrap();
        let image = Image::open(&f).unwrap();
        assert_eq!(
            image.block.volume_guid.hyphenated().to_string(),
            conf(name, "GUID")
        );
        let ids: Vec<_> = image.protectors().iter().map(|p| p.id).collect();
        assert!(
            ids.contains(&id(&conf(name, "RP_VMK_GUID"))),
            "{name}: {ids:?}"
        );
        assert!(
            ids.contains(&id(&conf(name, "PW_VMK_GUID"))),
            "{name}: {ids:?}"
        );
        assert_eq!(image.cipher().unwrap(), cipher);

        let rp = RecoveryPassword::parse(&conf(name, "RP")).unwrap();
        let u = image.unlock(Secret::RecoveryPassword(&rp)).unwrap();
        assert_eq!(u.unlocked_by(), Some(id(&conf(name, "RP_VMK_GUID"))));
        let pw = conf(name, "PW");
        let u2 = image.unlock(Secret::Password(&pw)).unwrap();
        assert_eq!(u2.unlocked_by(), Some(id(&conf(name, "PW_VMK_GUID"))));
        assert!(matches!(
            image.unlock(Secret::Password("not-anaconda")),
            Err(FveError::WrongSecret { .. })
        ));

        // The decrypted volume is NTFS, with the volume serial number upstream lists.
        let mut plain = Vec::new();
        image.decrypt_to(&f, &u, &mut plain).unwrap();
        assert_eq!(&plain[3..11], b"NTFS    ", "{name}");
        let serial: Vec<u8> = plain[72..80].iter().rev().copied().collect();
        assert_eq!(hex::encode_upper(serial), conf(name, "UUID"), "{name}");
        // Byte for byte what cryptsetup's device-mapper device shows: upstream's checksum
        // of /dev/mapper/NAME (3 metadata areas and the relocated header area read as zero).
        assert_eq!(sha256_hex(&plain), conf(name, "SHA256SUM"), "{name}");
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn volume_windows_startup_key_image() {
    let dir = tempfile::tempdir().unwrap();
    let name = "bitlk-aes-xts-128-startup-key";
    let img = windows_image(dir.path(), name);
    let f = std::fs::File::open(&img).unwrap();
    let image = Image::open(&f).unwrap();
    let sk = id(&conf(name, "SK_VMK_GUID"));
    let bek_name = format!("{}.BEK", conf(name, "SK_VMK_GUID").to_ascii_uppercase());
    let bek = BekFile::parse(&std::fs::read(data_dir().join(&bek_name)).unwrap()).unwrap();
    assert_eq!(bek.id, sk);
    assert_eq!(bek.file_name(), bek_name);
    let u = image.unlock(Secret::StartupKey(&bek)).unwrap();
    assert_eq!(u.unlocked_by(), Some(sk));
    let mut plain = Vec::new();
    image.decrypt_to(&f, &u, &mut plain).unwrap();
    assert_eq!(sha256_hex(&plain), conf(name, "SHA256SUM"));
    let p = image.protectors();
    let skp = p.iter().find(|p| p.id == sk).unwrap();
    assert_eq!(skp.type_name, "startup key");
    assert_eq!(skp.description.as_deref(), Some("ExternalKey"));
    // A .BEK of another volume names the missing protector.
    let stranger = BekFile {
        id: KeyProtectorId::random(&mut rand::rng()),
        key: [0; 32],
        created: 0,
    };
    assert!(matches!(
        image.unlock(Secret::StartupKey(&stranger)),
        Err(FveError::NoSuchProtector(x)) if x == stranger.id
    ));
}

#[test]
fn volume_windows_elephant_image_decrypts_to_its_published_checksum() {
    // Windows 7 wrote this AES-CBC-128 + Elephant volume; upstream published the SHA-256 of
    // cryptsetup's device-mapper view of it (dislocker-file's output has it too).
    let dir = tempfile::tempdir().unwrap();
    let name = "bitlk-aes-cbc-elephant-128";
    let img = windows_image(dir.path(), name);
    let f = std::fs::File::open(&img).unwrap();
    let image = Image::open(&f).unwrap();
    assert_eq!(image.cipher().unwrap(), Cipher::AesCbcElephant128);
    let rp = RecoveryPassword::parse(&conf(name, "RP")).unwrap();
    let u = image.unlock(Secret::RecoveryPassword(&rp)).unwrap();
    assert_eq!(u.unlocked_by(), Some(id(&conf(name, "RP_VMK_GUID"))));
    let pw = conf(name, "PW");
    let u2 = image.unlock(Secret::Password(&pw)).unwrap();
    assert_eq!(u2.unlocked_by(), Some(id(&conf(name, "PW_VMK_GUID"))));

    // Through the CLI: inspect names the method, unlock --out writes the plaintext.
    let img_arg = img.to_str().unwrap();
    let o = crate::common::harness()
        .args(["volume", "inspect", img_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("Encryption method: aes-cbc-elephant-128"),
        "{text}"
    );
    let out = dir.path().join("plain.img");
    let o = crate::common::harness()
        .args(["volume", "unlock", img_arg, "--recovery-password"])
        .arg(conf(name, "RP"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("(aes-cbc-elephant-128)"), "{text}");
    let plain = std::fs::read(&out).unwrap();
    assert_eq!(&plain[3..11], b"NTFS    ");
    let serial: Vec<u8> = plain[72..80].iter().rev().copied().collect();
    assert_eq!(hex::encode_upper(serial), conf(name, "UUID"));
    assert_eq!(sha256_hex(&plain), conf(name, "SHA256SUM"));
}

// --- malformed images ---

#[test]
fn volume_malformed_images_name_structure_and_offset() {
    let v = new_volume(Cipher::AesXts128, 5);
    let offsets = Image::open(v.image.as_slice())
        .unwrap()
        .header
        .metadata_offsets;

    // Truncated before the metadata.
    let err = Image::open(&v.image[..1 << 20]).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let err = Image::open(&v.image[..100]).unwrap_err().to_string();
    assert!(err.contains("volume header at offset 0x0"), "{err}");

    // One corrupt copy is skipped; all three corrupt is an error naming each CRC.
    let mut one = v.image.clone();
    one[offsets[0] as usize + 200] ^= 1;
    let img = Image::open(one.as_slice()).unwrap();
    assert_eq!(img.block.offset, offsets[1]);
    assert!(img.skipped[0].contains("CRC-32"), "{:?}", img.skipped);
    let mut all = one.clone();
    for o in &offsets[1..] {
        all[*o as usize + 200] ^= 1;
    }
    let err = Image::open(all.as_slice()).unwrap_err().to_string();
    assert!(err.contains("no valid FVE metadata block"), "{err}");
    assert_eq!(err.matches("CRC-32").count(), 3, "{err}");
    assert!(err.contains(&format!("{:#x}", offsets[2])), "{err}");

    // Metadata altered with its CRC fixed up: the SHA-256 under the VMK catches it.
    let mut forged = v.image.clone();
    for &o in &offsets {
        let o = o as usize;
        let size = usize::from(u16::from_le_bytes([forged[o + 8], forged[o + 9]])) << 4;
        // Change a byte of the description (UTF-16 text) and recompute the CRC.
        forged[o + 112 + 8] ^= 0x20;
        let crc = crc32(&forged[o..o + size]);
        forged[o + size + 4..o + size + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let img = Image::open(forged.as_slice()).unwrap();
    let err = img.unlock(Secret::Vmk(&v.vmk)).unwrap_err();
    assert!(matches!(err, FveError::ValidationMismatch { .. }), "{err}");

    // A bad MAC on the FVEK entry.
    let mut img = Image::open(v.image.as_slice()).unwrap();
    for e in &mut img.block.entries {
        if let bitlocker::fve::entry::Value::AesCcm(w) = &mut e.value {
            w.mac[0] ^= 1;
        }
    }
    let err = img.unlock(Secret::Vmk(&v.vmk)).unwrap_err().to_string();
    assert!(err.contains("FVEK") && err.contains("MAC"), "{err}");

    // Not BitLocker at all.
    let err = Image::open(vec![0u8; 4096].as_slice())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a BitLocker volume"), "{err}");
}

/// CRC-32 (IEEE), bitwise: independent of the crate the library uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

mod mutations {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn base() -> &'static (Vec<u8>, bitlocker::Vmk) {
        static B: OnceLock<(Vec<u8>, bitlocker::Vmk)> = OnceLock::new();
        B.get_or_init(|| {
            let v = new_volume(Cipher::AesXts128, 6);
            (v.image, v.vmk)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Any plaintext written under AES-CBC + Elephant (either size) reads back, and the
        /// image holds none of it in the clear.
        #[test]
        fn volume_elephant_round_trips_any_plaintext(
            big in any::<bool>(),
            seed in any::<u64>(),
            plain in proptest::collection::vec(any::<u8>(), 512..8192),
        ) {
            let cipher = if big { Cipher::AesCbcElephant256 } else { Cipher::AesCbcElephant128 };
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let v = NewVolume {
                size: 1 << 20,
                cipher,
                description: "TEST-PC E: round trip".into(),
                plaintext: Some(plain.clone()),
                protectors: vec![NewProtector::Tpm { blob: b"blob".to_vec() }],
            }
            .create(&mut rng)
            .unwrap();
            prop_assert_eq!(&v.plaintext_view[..plain.len()], &plain[..]);
            let image = Image::open(v.image.as_slice()).unwrap();
            prop_assert_eq!(image.cipher().unwrap(), cipher);
            let u = image.unlock(Secret::Vmk(&v.vmk)).unwrap();
            let mut out = Vec::new();
            image.decrypt_to(v.image.as_slice(), &u, &mut out).unwrap();
            prop_assert!(out == v.plaintext_view);
            // No 32-byte run of the plaintext survives in the image (sector 0 holds the header).
            let hdr = image.volume_header_area();
            let stored = &v.image[hdr.0 as usize..(hdr.0 + hdr.1) as usize];
            prop_assert!(!stored.windows(32).any(|w| w == &plain[..32]));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Mutated metadata never panics the parser or the VMK path; errors render.
        #[test]
        fn volume_mutated_metadata_never_panics(
            which in 0usize..3,
            edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8),
            cut in proptest::option::of(0usize..(2 << 20)),
        ) {
            let (img, vmk) = base();
            let offsets = Image::open(img.as_slice()).unwrap().header.metadata_offsets;
            let mut m = img.clone();
            for (at, b) in edits {
                m[offsets[which] as usize + at] = b;
            }
            if let Some(c) = cut { m.truncate(c); }
            match Image::open(m.as_slice()) {
                Ok(i) => {
                    let _ = i.protectors();
                    if let Err(e) = i.unlock(Secret::Vmk(vmk)) { let _ = e.to_string(); }
                }
                Err(e) => { let _ = e.to_string(); }
            }
        }
    }
}

mod machine_volume {
    //! The simulated device's volume is a real image: cryptsetup lists the machine's
    //! protectors (same IDs), through provisioning, re-seal and rotation; the runner's
    //! volume steps fail on a tampered image or a mismatched key.

    use bitlocker::external::{self, dumped_protectors, ToolSecret};
    use bitlocker::fve::{Cipher, Image};
    use device::machine::{BitLockerSetup, BootOutcome, Machine, TpmProtection};
    use device::{Change, Device, Profile};
    use harness::runner::volume_check::{check_portal_key, JudgedVolume, VolumeJudges};

    fn guid(id: bitlocker::KeyProtectorId) -> String {
        id.uuid().hyphenated().to_string()
    }

    /// (GUID, cryptsetup's protection wording) of every VMK keyslot, sorted.
    fn dumped(machine: &Machine) -> Vec<(String, String)> {
        let dump = external::cryptsetup_dump(machine.volume_image()).unwrap();
        assert!(
            dump.contains(&machine.volume_id().hyphenated().to_string()),
            "{dump}"
        );
        let mut v: Vec<_> = dumped_protectors(&dump)
            .into_iter()
            .map(|p| (p.guid, p.protection))
            .collect();
        v.sort();
        v
    }

    fn expected(machine: &Machine, tpm_wording: &str) -> Vec<(String, String)> {
        let mut v: Vec<_> = machine
            .recovery_key_ids()
            .iter()
            .map(|id| {
                (
                    guid(*id),
                    "VMK protected with recovery passphrase".to_string(),
                )
            })
            .collect();
        v.push((guid(machine.tpm_protector_id()), tpm_wording.to_string()));
        v.sort();
        v
    }

    #[test]
    fn volume_machine_image_lists_its_protectors_through_reseal_and_rotation() {
        super::require_tools();
        let setup = BitLockerSetup {
            profile: Profile::SecureBoot7_11,
            protection: TpmProtection::TpmPin {
                pin: "123456".into(),
            },
            recovery_passwords: 2,
            ..BitLockerSetup::default()
        };
        let (mut machine, escrow) =
            Machine::provision(Device::default(), &setup, &mut rand::rng()).unwrap();
        assert_eq!(escrow.len(), 2);
        assert!(escrow.iter().all(|k| k.volume_id == machine.volume_id()));
        let tpm_pin = "VMK protected with TPM and PIN";
        assert_eq!(dumped(&machine), expected(&machine, tpm_pin));
        // Our reader sees the sealed blob in the TPM+PIN protector.
        let f = std::fs::File::open(machine.volume_image()).unwrap();
        assert_eq!(Image::open(&f).unwrap().protectors().len(), 3);

        // A lockout, the escrowed key typed, a re-seal written into the image.
        assert!(matches!(
            machine.boot(Some("123456")).unwrap(),
            BootOutcome::Unlocked { .. }
        ));
        machine.apply(&Change::SecureBootDbxUpdate).unwrap();
        let BootOutcome::Recovery(screen) = machine.boot(Some("123456")).unwrap() else {
            panic!("expected the recovery screen");
        };
        let key = escrow
            .iter()
            .find(|k| k.key_protector_id == screen.key_id)
            .unwrap();
        machine
            .enter_recovery_password(&key.recovery_password.to_string(), None)
            .unwrap();
        assert!(matches!(
            machine.boot(Some("123456")).unwrap(),
            BootOutcome::Unlocked { .. }
        ));
        assert_eq!(dumped(&machine), expected(&machine, tpm_pin));

        // Rotation: the old ID is gone from the image, the new one is there.
        let old = key.key_protector_id;
        let new = machine
            .rotate_recovery_password(old, &mut rand::rng())
            .unwrap();
        let after = dumped(&machine);
        assert_eq!(after, expected(&machine, tpm_pin));
        assert!(after.iter().any(|(g, _)| *g == guid(new.key_protector_id)));
        assert!(after.iter().all(|(g, _)| *g != guid(old)));
        let image = machine.volume_image();
        let old_pw = key.recovery_password.to_string();
        let new_pw = new.recovery_password.to_string();
        assert!(
            !external::cryptsetup_accepts(image, ToolSecret::RecoveryPassword(&old_pw)).unwrap()
        );
        assert!(
            external::cryptsetup_accepts(image, ToolSecret::RecoveryPassword(&new_pw)).unwrap()
        );
    }

    fn all_judges() -> VolumeJudges {
        VolumeJudges {
            cryptsetup: true,
            dislocker: true,
        }
    }

    /// (step name, passed) of the runner's portal-key steps.
    fn judged(machine: &Machine, id: bitlocker::KeyProtectorId, pw: &str) -> Vec<(String, bool)> {
        let volume = JudgedVolume {
            image: machine.volume_image(),
            data_sha256: machine.volume_data_sha256(),
        };
        check_portal_key(all_judges(), volume, id, pw)
            .into_iter()
            .map(|s| (s.name, s.failure.is_none()))
            .collect()
    }

    const LISTED: &str = "cryptsetup bitlkDump lists the portal's key ID";
    const ACCEPTED: &str = "cryptsetup accepts the portal's recovery password";
    const DECRYPTED: &str =
        "dislocker-file decrypts with the portal's recovery password and the data matches";

    #[test]
    fn volume_check_steps_pass_for_the_escrowed_key_and_fail_for_a_mismatched_one() {
        super::require_tools();
        let setup = BitLockerSetup::default();
        let (machine, escrow) =
            Machine::provision(Device::default(), &setup, &mut rand::rng()).unwrap();
        let (other, other_escrow) =
            Machine::provision(Device::default(), &setup, &mut rand::rng()).unwrap();
        drop(other);
        let key = &escrow[0];
        let right = judged(
            &machine,
            key.key_protector_id,
            &key.recovery_password.to_string(),
        );
        assert_eq!(
            right,
            vec![
                (LISTED.to_string(), true),
                (ACCEPTED.to_string(), true),
                (DECRYPTED.to_string(), true)
            ]
        );
        // Another device's pair: this image neither lists nor accepts it.
        let wrong = &other_escrow[0];
        let got = judged(
            &machine,
            wrong.key_protector_id,
            &wrong.recovery_password.to_string(),
        );
        assert_eq!(
            got,
            vec![
                (LISTED.to_string(), false),
                (ACCEPTED.to_string(), false),
                (DECRYPTED.to_string(), false)
            ]
        );
    }

    /// The catalog's Windows 7 scenario gives its device an AES-CBC-128 + Elephant volume,
    /// and the runner's cryptsetup and dislocker steps pass on it with the escrowed key.
    #[test]
    fn volume_elephant_scenario_device_has_an_elephant_volume_the_judges_open() {
        super::require_tools();
        let file = crate::common::workspace_root()
            .join("scenarios/windows7-elephant-volume-firmware-flash.yaml");
        let s = harness::scenario::load_scenario(&file).unwrap();
        let spec = s.device_named(None).unwrap();
        let setup = harness::runner::bitlocker_setup(spec).unwrap();
        assert_eq!(setup.cipher, Cipher::AesCbcElephant128);
        let device = harness::runner::scenario_device(spec).unwrap();
        let (machine, escrow) = Machine::provision(device, &setup, &mut rand::rng()).unwrap();
        let image = Image::open(&std::fs::File::open(machine.volume_image()).unwrap()).unwrap();
        assert_eq!(image.cipher().unwrap(), Cipher::AesCbcElephant128);
        let dump = external::cryptsetup_dump(machine.volume_image()).unwrap();
        assert!(dump.contains("cbc-elephant"), "{dump}");
        let key = &escrow[0];
        let steps = judged(
            &machine,
            key.key_protector_id,
            &key.recovery_password.to_string(),
        );
        assert_eq!(
            steps,
            vec![
                (LISTED.to_string(), true),
                (ACCEPTED.to_string(), true),
                (DECRYPTED.to_string(), true)
            ]
        );
    }

    #[test]
    fn volume_check_names_the_dislocker_step_when_the_image_data_was_corrupted() {
        super::require_tools();
        use std::os::unix::fs::FileExt;
        let (machine, escrow) = Machine::provision(
            Device::default(),
            &BitLockerSetup::default(),
            &mut rand::rng(),
        )
        .unwrap();
        // Flip a byte of sector 100's ciphertext (data, not metadata): the keys still open,
        // the data no longer is what the harness wrote.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(machine.volume_image())
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 100 * 512 + 7).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], 100 * 512 + 7).unwrap();
        drop(f);
        let key = &escrow[0];
        let got = judged(
            &machine,
            key.key_protector_id,
            &key.recovery_password.to_string(),
        );
        assert_eq!(
            got,
            vec![
                (LISTED.to_string(), true),
                (ACCEPTED.to_string(), true),
                (DECRYPTED.to_string(), false)
            ]
        );
        let volume = JudgedVolume {
            image: machine.volume_image(),
            data_sha256: machine.volume_data_sha256(),
        };
        let records = check_portal_key(
            VolumeJudges {
                cryptsetup: false,
                dislocker: true,
            },
            volume,
            key.key_protector_id,
            &key.recovery_password.to_string(),
        );
        let failure = records[0].failure.as_ref().unwrap();
        assert_eq!(failure.step, DECRYPTED);
        assert!(failure
            .expected
            .contains(&hex::encode(machine.volume_data_sha256())));
        // The device itself also refuses to call that volume unlocked.
        assert!(machine.password_unlocks(&key.recovery_password).is_err());
    }
}
