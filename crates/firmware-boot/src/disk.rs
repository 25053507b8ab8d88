//! The boot disk: Debian's signed shim → grub → kernel and a tiny initramfs on a GPT disk
//! with a FAT ESP, cached by the inputs' versions.
//!
//! The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`:
//! nothing is installed on the host. The disk is byte-reproducible: fixed disk and partition
//! GUIDs (the PCR 5 GPT event), a fixed FAT volume id and timestamps
//! (`mkfs.vfat --invariant`, `SOURCE_DATE_EPOCH` for mtools), and an initramfs written with
//! fixed inode numbers and mtimes (the PCR 9 initrd measurement).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::command::{run, stdout};
use crate::cpio::{self, Entry};
use crate::error::{io_error, Error, Result};

/// The packages of the boot chain besides the kernel (whose package name
/// `linux-image-amd64` depends on is looked up at build time).
const CHAIN_PACKAGES: [&str; 3] = ["shim-signed", "grub-efi-amd64-signed", "busybox-static"];
/// The guest's /init.
const INIT_SCRIPT: &str = include_str!("init.sh");
/// Bumped when the layout below changes, so old cached disks are not reused.
const LAYOUT_VERSION: &str = "firmware-boot disk layout 1";
/// Fixed GPT identities: PCR 5 measures the GPT header and entries.
const DISK_GUID: &str = "6F3C5B2A-1D2E-4F50-9A8B-0C1D2E3F4A5B";
const ESP_GUID: &str = "0D1C2B3A-4F5E-4A6B-8C7D-9E0F1A2B3C4D";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const DISK_MIB: u64 = 64;
/// The timestamp mtools writes into FAT directory entries.
const SOURCE_DATE_EPOCH: &str = "1700000000";

/// What the loader configuration says beyond the fixed boot entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSpec {
    /// Extra words on the kernel command line (grub measures it into PCR 8).
    pub kernel_cmdline_extra: Vec<String>,
    /// An extra grub.cfg line (grub measures each command into PCR 8 and the file into 9).
    pub grub_cfg_extra: Option<String>,
}

/// A Debian package at the version that went into a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
}

/// A built (or cached) boot disk.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// The raw disk image.
    pub path: PathBuf,
    /// The packages whose files are on it.
    pub packages: Vec<PackageVersion>,
    /// The hash of every input: packages, /init, grub.cfg, layout.
    pub key: String,
}

/// Where downloaded packages and built disks are kept between runs.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$FIRMWARE_BOOT_CACHE`, else `$XDG_CACHE_HOME/firmware-boot`, else
    /// `$HOME/.cache/firmware-boot`.
    pub fn default_location() -> Result<Self> {
        if let Some(dir) = std::env::var_os("FIRMWARE_BOOT_CACHE") {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Ok(Self::new(PathBuf::from(dir).join("firmware-boot")));
        }
        match std::env::var_os("HOME") {
            Some(home) => Ok(Self::new(PathBuf::from(home).join(".cache/firmware-boot"))),
            None => Err(Error::Input(
                "no cache directory: set FIRMWARE_BOOT_CACHE, XDG_CACHE_HOME or HOME".to_string(),
            )),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh scratch directory inside the cache (same filesystem, so results can be
    /// renamed into place atomically).
    fn scratch(&self) -> Result<tempfile::TempDir> {
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.dir)
            .map_err(io_error(&self.dir))
    }
}

/// Builds the boot disk for `spec`, or returns the cached one built from the same inputs.
pub fn build_boot_disk(cache: &Cache, spec: &DiskSpec) -> Result<BootDisk> {
    let packages = candidate_versions()?;
    let root = unpacked_packages(cache, &packages)?;
    let grub_cfg = grub_cfg(spec);
    let key = disk_key(&packages, &grub_cfg);
    let disks = cache.dir.join("disks");
    let path = disks.join(format!("{key}.img"));
    if !path.exists() {
        let scratch = cache.scratch()?;
        let image = scratch.path().join("disk.img");
        assemble_disk(&root, &grub_cfg, scratch.path(), &image)?;
        fs::create_dir_all(&disks).map_err(io_error(&disks))?;
        fs::rename(&image, &path).map_err(io_error(&path))?;
    }
    Ok(BootDisk {
        path,
        packages,
        key,
    })
}

/// The packages of the chain at the versions apt would download now (one `apt-cache` call:
/// each takes seconds on a loaded machine).
fn candidate_versions() -> Result<Vec<PackageVersion>> {
    let mut names: Vec<String> = CHAIN_PACKAGES.iter().map(|s| s.to_string()).collect();
    names.push(kernel_package()?);
    names.sort();
    let out = stdout(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(&names),
        "Debian's apt",
    )?;
    names
        .into_iter()
        .map(|name| {
            let version = stanza_version(&out, &name).ok_or_else(|| {
                Error::Input(format!(
                    "apt-cache knows no version of {name} (run `apt-get update`?)"
                ))
            })?;
            Ok(PackageVersion { name, version })
        })
        .collect()
}

/// The `Version:` of package `name` in `apt-cache show` output (stanzas split by blank lines).
fn stanza_version(apt_cache_show: &str, name: &str) -> Option<String> {
    apt_cache_show.split("\n\n").find_map(|stanza| {
        let mut lines = stanza.lines();
        let is_it = lines
            .clone()
            .any(|l| l.strip_prefix("Package: ") == Some(name));
        let version = lines.find_map(|l| l.strip_prefix("Version: "));
        version.filter(|_| is_it).map(|v| v.trim().to_string())
    })
}

/// The versioned kernel package `linux-image-amd64` depends on (e.g. linux-image-6.1.0-57-amd64).
fn kernel_package() -> Result<String> {
    let out = stdout(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        "Debian's apt",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Input(
                "`apt-cache depends linux-image-amd64` names no kernel package (run `apt-get update`?)"
                    .to_string(),
            )
        })
}

/// Downloads and unpacks the packages once per set of versions; returns the unpacked root.
fn unpacked_packages(cache: &Cache, packages: &[PackageVersion]) -> Result<PathBuf> {
    let mut h = Sha256::new();
    for p in packages {
        h.update(format!("{}={}\n", p.name, p.version));
    }
    let dir = cache
        .dir
        .join("packages")
        .join(&hex::encode(h.finalize())[..16]);
    if dir.join("root").is_dir() {
        return Ok(dir.join("root"));
    }
    let scratch = cache.scratch()?;
    let debs = scratch.path().join("debs");
    let root = scratch.path().join("root");
    fs::create_dir_all(&debs).map_err(io_error(&debs))?;
    fs::create_dir_all(&root).map_err(io_error(&root))?;
    let wanted: Vec<String> = packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    run(
        Command::new("apt-get")
            .arg("download")
            .args(&wanted)
            .current_dir(&debs),
        "Debian's apt",
    )?;
    for entry in fs::read_dir(&debs).map_err(io_error(&debs))? {
        let deb = entry.map_err(io_error(&debs))?.path();
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "Debian's dpkg",
        )?;
    }
    // Only the boot files are used: drop the .debs and the kernel's modules (460 MB of 490).
    for unused in [debs, root.join("lib/modules")] {
        if unused.exists() {
            fs::remove_dir_all(&unused).map_err(io_error(&unused))?;
        }
    }
    fs::create_dir_all(dir.parent().unwrap_or(&cache.dir)).map_err(io_error(&cache.dir))?;
    match fs::rename(scratch.path(), &dir) {
        // The scratch directory moved: nothing is left for its drop to remove.
        Ok(()) => drop(scratch.keep()),
        // Another build finished the same packages first: use its copy, drop ours.
        Err(_) if dir.join("root").is_dir() => {}
        Err(e) => return Err(io_error(&dir)(e)),
    }
    Ok(dir.join("root"))
}

fn grub_cfg(spec: &DiskSpec) -> String {
    let extra_cmdline: String = spec
        .kernel_cmdline_extra
        .iter()
        .map(|w| format!(" {w}"))
        .collect();
    let extra_line = spec.grub_cfg_extra.as_deref().unwrap_or("");
    // linuxefi/initrdefi, not linux/initrd: with Secure Boot off, Debian's grub `linux` uses
    // the legacy x86 boot protocol, the kernel's EFI stub never runs, and the kernel never
    // gets the firmware's event log.
    format!(
        "set timeout=0\n{extra_line}\nset default=0\nmenuentry firmware-boot {{\n  \
         linuxefi /vmlinuz console=ttyS0,115200 quiet loglevel=3 panic=-1{extra_cmdline}\n  \
         initrdefi /initrd.img\n}}\n"
    )
}

fn disk_key(packages: &[PackageVersion], grub_cfg: &str) -> String {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION);
    for p in packages {
        h.update(format!("\n{}={}", p.name, p.version));
    }
    h.update("\n--init--\n");
    h.update(INIT_SCRIPT);
    h.update("\n--grub.cfg--\n");
    h.update(grub_cfg);
    hex::encode(h.finalize())[..24].to_string()
}

/// The initramfs: a static busybox and /init, uncompressed (the kernel takes a plain cpio,
/// and no compressor's output can drift between versions).
pub fn initramfs(busybox: Vec<u8>) -> Result<Vec<u8>> {
    cpio::newc_archive(&[
        Entry::dir("bin"),
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::dir("dev"),
        Entry::char_device("dev/console", 5, 1),
        Entry::file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec()),
        Entry::dir("proc"),
        Entry::dir("sys"),
    ])
    .map_err(|e| Error::Input(e.to_string()))
}

fn assemble_disk(root: &Path, grub_cfg: &str, work: &Path, image: &Path) -> Result<()> {
    let shim = root.join("usr/lib/shim/shimx64.efi.signed");
    let grub = root.join("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed");
    let busybox = root.join("bin/busybox");
    let vmlinuz = find_kernel(&root.join("boot"))?;
    for f in [&shim, &grub, &busybox] {
        if !f.is_file() {
            return Err(Error::Input(format!(
                "{} is missing from the unpacked packages",
                f.display()
            )));
        }
    }
    // Files to copy, with their names on the ESP. mcopy -m keeps the fixed mtime we set.
    let initrd = work.join("initrd.img");
    let busybox_bytes = fs::read(&busybox).map_err(io_error(&busybox))?;
    fs::write(&initrd, initramfs(busybox_bytes)?).map_err(io_error(&initrd))?;
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, grub_cfg).map_err(io_error(&cfg))?;
    let staged = [
        (shim, "::/EFI/BOOT/BOOTX64.EFI"),
        (grub, "::/EFI/BOOT/grubx64.efi"),
        // Debian's signed grub has prefix /EFI/debian built in; shim's dir is the fallback.
        (cfg.clone(), "::/EFI/debian/grub.cfg"),
        (cfg, "::/EFI/BOOT/grub.cfg"),
        (vmlinuz, "::/vmlinuz"),
        (initrd, "::/initrd.img"),
    ];

    let file = fs::File::create(image).map_err(io_error(image))?;
    file.set_len(DISK_MIB << 20).map_err(io_error(image))?;
    drop(file);
    let layout = format!(
        "label: gpt\nlabel-id: {DISK_GUID}\nstart=2048, type={ESP_TYPE}, uuid={ESP_GUID}, name=\"ESP\"\n"
    );
    let layout_file = work.join("layout.sfdisk");
    fs::write(&layout_file, layout).map_err(io_error(&layout_file))?;
    let stdin = fs::File::open(&layout_file).map_err(io_error(&layout_file))?;
    run(
        Command::new("sfdisk").arg("-q").arg(image).stdin(stdin),
        "Debian package fdisk",
    )?;
    // The ESP fills the disk from 1 MiB to the backup GPT (33 sectors): 63488 KiB blocks.
    let esp_kib = ((DISK_MIB << 20) - (1 << 20) - 33 * 512) / 1024;
    run(
        Command::new("mkfs.vfat")
            .args(["--invariant", "-F", "32", "-i", "1234ABCD", "-n", "FWBOOT"])
            .args(["--offset", "2048"])
            .arg(image)
            .arg(esp_kib.to_string()),
        "Debian package dosfstools",
    )?;
    let esp = format!("{}@@1M", image.display());
    let mtools = |program: &str| {
        let mut c = Command::new(program);
        c.env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .arg("-i")
            .arg(&esp);
        c
    };
    run(
        mtools("mmd").args(["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]),
        "Debian package mtools",
    )?;
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(cpio::FIXED_MTIME));
    for (n, (source, target)) in staged.iter().enumerate() {
        // A private copy with a fixed mtime (the unpacked packages stay untouched).
        let copy = work.join(format!("staged-{n}"));
        fs::copy(source, &copy).map_err(io_error(source))?;
        let f = fs::File::options()
            .write(true)
            .open(&copy)
            .map_err(io_error(&copy))?;
        f.set_modified(mtime).map_err(io_error(&copy))?;
        drop(f);
        run(
            mtools("mcopy").arg("-m").arg(&copy).arg(target),
            "Debian package mtools",
        )?;
    }
    Ok(())
}

fn find_kernel(boot: &Path) -> Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir(boot)
        .map_err(io_error(boot))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    match kernels.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::Input(format!(
            "expected exactly one vmlinuz-* in {}, found {}",
            boot.display(),
            kernels.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_package_gets_the_version_of_its_own_stanza() {
        let show = "Package: busybox-static\nVersion: 1:1.35.0-4\n\nPackage: shim-signed\nSource: x\nVersion: 1.51\n";
        assert_eq!(stanza_version(show, "shim-signed").as_deref(), Some("1.51"));
        assert_eq!(
            stanza_version(show, "busybox-static").as_deref(),
            Some("1:1.35.0-4")
        );
        assert_eq!(stanza_version(show, "busybox"), None);
    }

    #[test]
    fn the_loader_configuration_is_part_of_the_disk_key() {
        let packages = vec![PackageVersion {
            name: "shim-signed".into(),
            version: "1".into(),
        }];
        let base = grub_cfg(&DiskSpec::default());
        let cmdline = grub_cfg(&DiskSpec {
            kernel_cmdline_extra: vec!["x=1".into()],
            grub_cfg_extra: None,
        });
        assert!(cmdline.contains("panic=-1 x=1\n"));
        assert_ne!(disk_key(&packages, &base), disk_key(&packages, &cmdline));
        assert_eq!(disk_key(&packages, &base), disk_key(&packages, &base));
    }

    #[test]
    fn the_initramfs_holds_init_and_busybox_and_is_reproducible() -> Result<()> {
        let a = initramfs(b"busybox".to_vec())?;
        assert_eq!(a, initramfs(b"busybox".to_vec())?);
        assert!(a.windows(5).any(|w| w == b"init\0"));
        assert!(a.windows(12).any(|w| w == b"bin/busybox\0"));
        Ok(())
    }
}
