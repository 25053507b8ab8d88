//! `harness volume ...`: BitLocker volume images in the real on-disk format.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::exit_codes;
use bitlocker::fve::{self, BekFile, Cipher, FveError, Image, NewProtector, NewVolume, Secret};
use bitlocker::{ParseError, RecoveryPassword};

/// `harness volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Write a BitLocker volume image with a recovery password (and other protectors) and
    /// known data inside. cryptsetup (BITLK) and dislocker open it.
    Create(CreateArgs),
    /// List the protectors (ID, type, creation time, description), like
    /// `manage-bde -protectors -get`.
    Inspect {
        /// The image.
        image: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Prove a secret against the volume (VMK MAC, metadata validation, FVEK MAC); with
    /// `--out`, write the decrypted volume. Exit 1 if the secret is wrong.
    Unlock(UnlockArgs),
    /// Rotation after use: unlock with the recovery password, replace its protector with a
    /// new one (new ID, new password), rewrite the three metadata copies.
    Rotate {
        /// The image.
        image: PathBuf,
        /// The recovery password to retire.
        #[arg(long)]
        recovery_password: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `harness volume create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Output image file.
    pub image: PathBuf,
    /// Volume size: bytes, or with K/M/G suffix (rounded up to 64 KiB, at least 1M).
    #[arg(long, default_value = "8M")]
    pub size: String,
    /// Sector cipher: aes-xts-128 (Windows 10+ default), aes-xts-256, or AES-CBC with the
    /// Elephant diffuser (Windows Vista/7): aes-cbc-elephant-128 or aes-cbc-elephant-256.
    #[arg(long, default_value = "aes-xts-128")]
    pub cipher: Cipher,
    /// Use this recovery password instead of a random one.
    #[arg(long)]
    pub recovery_password: Option<String>,
    /// Also add a password protector.
    #[arg(long)]
    pub password: Option<String>,
    /// Also add a startup-key protector; its {GUID}.BEK file is written to this directory.
    #[arg(long, value_name = "DIR")]
    pub startup_key: Option<PathBuf>,
    /// Also add a TPM protector holding this file as its opaque TPM2 sealed blob.
    #[arg(long, value_name = "BLOB")]
    pub tpm_blob: Option<PathBuf>,
    /// Also add a TPM+PIN protector holding this file as its opaque TPM2 sealed blob.
    #[arg(long, value_name = "BLOB")]
    pub tpm_pin_blob: Option<PathBuf>,
    /// The volume's plaintext (e.g. a FAT image from mkfs.fat); default: known patterns.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Description stored in the metadata.
    #[arg(long, default_value = "HARNESS-PC H: simulated")]
    pub description: String,
    /// JSON output: volume GUID and each protector's ID, type (and recovery password).
    #[arg(long)]
    pub json: bool,
}

/// `harness volume unlock`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).multiple(false)))]
pub struct UnlockArgs {
    /// The image.
    pub image: PathBuf,
    /// 48-digit recovery password.
    #[arg(long, group = "secret")]
    pub recovery_password: Option<String>,
    /// Startup key file (.BEK).
    #[arg(long, group = "secret")]
    pub bek: Option<PathBuf>,
    /// Password.
    #[arg(long, group = "secret")]
    pub password: Option<String>,
    /// The clear key of a suspended volume.
    #[arg(long, group = "secret")]
    pub clear_key: bool,
    /// Write the decrypted volume here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Why a volume command failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeCliError {
    /// The image or secret was rejected.
    #[error("{path}: {source}")]
    Fve {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: FveError,
    },
    /// Bad recovery password syntax.
    #[error("invalid recovery password: {0}")]
    Password(#[from] ParseError),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bad flag.
    #[error("{0}")]
    Usage(String),
}

impl VolumeCliError {
    /// Exit code: 1 wrong secret or bad/malformed image, 2 usage and unsupported, 3 I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Fve {
                source: FveError::Unsupported(_) | FveError::InvalidParams(_),
                ..
            }
            | Self::Usage(_) => exit_codes::USAGE,
            Self::Fve {
                source: FveError::Io { .. },
                ..
            }
            | Self::Io { .. } => exit_codes::IO,
            Self::Fve { .. } | Self::Password(_) => exit_codes::FAILED,
        }
    }
}

fn fve(path: &Path) -> impl Fn(FveError) -> VolumeCliError + '_ {
    move |source| VolumeCliError::Fve {
        path: path.display().to_string(),
        source,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> VolumeCliError + '_ {
    move |source| VolumeCliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Parses `8M`, `1G`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, VolumeCliError> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| VolumeCliError::Usage(format!("--size {s:?}: expected bytes or N[K|M|G]")))
}

/// Runs `harness volume ...`.
pub fn run(cmd: &VolumeCommand, out: &mut dyn Write) -> Result<(), super::CliError> {
    let r = match cmd {
        VolumeCommand::Create(a) => create(a, out),
        VolumeCommand::Inspect { image, json } => inspect(image, *json, out),
        VolumeCommand::Unlock(a) => unlock(a, out),
        VolumeCommand::Rotate {
            image,
            recovery_password,
            json,
        } => rotate(image, recovery_password, *json, out),
    };
    r.map_err(super::CliError::Volume)
}

fn create(a: &CreateArgs, out: &mut dyn Write) -> Result<(), VolumeCliError> {
    let mut protectors = vec![NewProtector::RecoveryPassword(
        a.recovery_password
            .as_deref()
            .map(RecoveryPassword::parse)
            .transpose()?,
    )];
    if let Some(p) = &a.password {
        protectors.push(NewProtector::Password(p.clone()));
    }
    if a.startup_key.is_some() {
        protectors.push(NewProtector::StartupKey);
    }
    if let Some(f) = &a.tpm_blob {
        protectors.push(NewProtector::Tpm {
            blob: std::fs::read(f).map_err(io(f))?,
        });
    }
    if let Some(f) = &a.tpm_pin_blob {
        protectors.push(NewProtector::TpmAndPin {
            blob: std::fs::read(f).map_err(io(f))?,
        });
    }
    let plaintext = match &a.from {
        Some(f) => Some(std::fs::read(f).map_err(io(f))?),
        None => None,
    };
    let spec = NewVolume {
        size: parse_size(&a.size)?,
        cipher: a.cipher,
        description: a.description.clone(),
        plaintext,
        protectors,
    };
    let created = spec.create(&mut rand::rng()).map_err(fve(&a.image))?;
    std::fs::write(&a.image, &created.image).map_err(io(&a.image))?;
    let mut bek_paths = Vec::new();
    if let Some(dir) = &a.startup_key {
        for p in &created.protectors {
            if let Some(b) = &p.bek {
                let path = dir.join(b.file_name());
                let bytes = b.to_bytes().map_err(fve(&path))?;
                std::fs::write(&path, bytes).map_err(io(&path))?;
                bek_paths.push(path.display().to_string());
            }
        }
    }
    let w = |e| VolumeCliError::Io {
        path: "<output>".into(),
        source: e,
    };
    if a.json {
        let v = serde_json::json!({
            "image": a.image.display().to_string(),
            "volume_guid": created.volume_guid.hyphenated().to_string(),
            "cipher": a.cipher.name(),
            "size": created.image.len(),
            "protectors": created.protectors,
            "bek_files": bek_paths,
        });
        writeln!(out, "{v:#}").map_err(w)?;
    } else {
        writeln!(
            out,
            "wrote {} ({} bytes, {}), volume GUID {}",
            a.image.display(),
            created.image.len(),
            a.cipher.name(),
            created.volume_guid.hyphenated()
        )
        .map_err(w)?;
        for p in &created.protectors {
            write!(out, "  {} {:?}", p.id, p.protector_type).map_err(w)?;
            if let Some(pw) = &p.recovery_password {
                write!(out, " {pw}").map_err(w)?;
            }
            writeln!(out).map_err(w)?;
        }
        for b in bek_paths {
            writeln!(out, "  startup key file: {b}").map_err(w)?;
        }
    }
    Ok(())
}

fn open_image(path: &Path) -> Result<(std::fs::File, Image), VolumeCliError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let img = Image::open(&f).map_err(fve(path))?;
    Ok((f, img))
}

fn inspect(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), VolumeCliError> {
    let (_f, img) = open_image(path)?;
    let protectors = img.protectors();
    let cipher = match img.cipher() {
        Ok(c) => c.name().to_string(),
        Err(e) => format!("{:#06x} ({e})", img.block.method),
    };
    let w = |e| VolumeCliError::Io {
        path: "<output>".into(),
        source: e,
    };
    if json {
        let v = serde_json::json!({
            "volume_guid": img.block.volume_guid.hyphenated().to_string(),
            "description": img.description(),
            "cipher": cipher,
            "method": img.block.method,
            "sector_size": img.header.sector_size,
            "togo": img.header.togo,
            "kind": img.header.kind,
            "created": fve::image::filetime_rfc3339(img.block.creation_time),
            "encrypted_volume_size": img.block.encrypted_volume_size,
            "state": img.block.state,
            "metadata_offsets": img.header.metadata_offsets,
            "metadata_block_used": img.block.offset,
            "skipped_metadata_blocks": img.skipped,
            "protectors": protectors,
        });
        writeln!(out, "{v:#}").map_err(w)?;
        return Ok(());
    }
    writeln!(
        out,
        "Volume {} [{}]\n  GUID: {}\n  Encryption method: {cipher}\n  Created: {}\n  Sector size: {}{}",
        path.display(),
        img.description().unwrap_or(""),
        img.block.volume_guid.hyphenated(),
        fve::image::filetime_rfc3339(img.block.creation_time),
        img.header.sector_size,
        if img.header.togo { " (BitLocker To Go)" } else { "" },
    )
    .map_err(w)?;
    for s in &img.skipped {
        writeln!(out, "  warning: skipped {s}").map_err(w)?;
    }
    writeln!(out, "\nKey Protectors:").map_err(w)?;
    for p in protectors {
        writeln!(
            out,
            "  {}:\n    ID: {}\n    Created: {}{}",
            p.type_name,
            p.id,
            p.modified,
            p.description
                .map(|d| format!("\n    Description: {d}"))
                .unwrap_or_default()
        )
        .map_err(w)?;
    }
    Ok(())
}

fn unlock(a: &UnlockArgs, out: &mut dyn Write) -> Result<(), VolumeCliError> {
    let (f, img) = open_image(&a.image)?;
    let pw;
    let bek;
    let secret = if let Some(p) = &a.recovery_password {
        pw = RecoveryPassword::parse(p)?;
        Secret::RecoveryPassword(&pw)
    } else if let Some(path) = &a.bek {
        let bytes = std::fs::read(path).map_err(io(path))?;
        bek = BekFile::parse(&bytes).map_err(fve(path))?;
        Secret::StartupKey(&bek)
    } else if let Some(p) = &a.password {
        Secret::Password(p)
    } else if a.clear_key {
        Secret::ClearKey
    } else {
        return Err(VolumeCliError::Usage(
            "give --recovery-password, --bek, --password or --clear-key".into(),
        ));
    };
    let u = img.unlock(secret).map_err(fve(&a.image))?;
    let w = |e| VolumeCliError::Io {
        path: "<output>".into(),
        source: e,
    };
    writeln!(
        out,
        "unlocked {} ({}){}: VMK MAC, metadata SHA-256 and FVEK MAC verified",
        a.image.display(),
        u.cipher().name(),
        u.unlocked_by()
            .map(|id| format!(" via protector {id}"))
            .unwrap_or_default()
    )
    .map_err(w)?;
    if let Some(o) = &a.out {
        let file = std::fs::File::create(o).map_err(io(o))?;
        let mut bw = std::io::BufWriter::new(file);
        let n = img.decrypt_to(&f, &u, &mut bw).map_err(fve(&a.image))?;
        bw.flush().map_err(io(o))?;
        writeln!(out, "wrote {n} decrypted bytes to {}", o.display()).map_err(w)?;
    }
    Ok(())
}

fn rotate(path: &Path, old: &str, json: bool, out: &mut dyn Write) -> Result<(), VolumeCliError> {
    let (_f, mut img) = open_image(path)?;
    let pw = RecoveryPassword::parse(old)?;
    let u = img
        .unlock(Secret::RecoveryPassword(&pw))
        .map_err(fve(path))?;
    let old_id = u
        .unlocked_by()
        .ok_or_else(|| VolumeCliError::Usage("no protector opened".into()))?;
    let (id, new) = img
        .rotate_recovery_password(&u, &mut rand::rng(), old_id)
        .map_err(fve(path))?;
    img.write_metadata(path, u.vmk()).map_err(fve(path))?;
    let w = |e| VolumeCliError::Io {
        path: "<output>".into(),
        source: e,
    };
    if json {
        let v =
            serde_json::json!({"removed": old_id, "id": id, "recovery_password": new.to_string()});
        writeln!(out, "{v:#}").map_err(w)?;
    } else {
        writeln!(out, "removed {old_id}\nadded {id} {new}").map_err(w)?;
    }
    Ok(())
}
