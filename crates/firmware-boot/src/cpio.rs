//! A byte-reproducible cpio "newc" archive (the initramfs format the kernel unpacks).
//!
//! Fixed inode numbers, owners and mtimes, entries in the order given: the same entries give
//! the same bytes, so the initrd's PCR 9 measurement does not move between rebuilds.

/// The mtime of every entry (2023-11-14): any constant will do.
pub const FIXED_MTIME: u32 = 1_700_000_000;

/// One archive member.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the archive, without a leading `/` (e.g. `bin/busybox`).
    pub name: String,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// File contents (empty for directories and device nodes).
    pub data: Vec<u8>,
    /// Device number (major, minor) for device nodes.
    pub rdev: (u32, u32),
}

impl Entry {
    pub fn dir(name: &str) -> Self {
        Self::new(name, 0o040_755, Vec::new())
    }
    pub fn file(name: &str, mode: u32, data: Vec<u8>) -> Self {
        Self::new(name, 0o100_000 | mode, data)
    }
    pub fn char_device(name: &str, major: u32, minor: u32) -> Self {
        let mut e = Self::new(name, 0o020_600, Vec::new());
        e.rdev = (major, minor);
        e
    }
    fn new(name: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            mode,
            data,
            rdev: (0, 0),
        }
    }
}

/// An entry newc cannot hold: its fields are 32-bit.
#[derive(Debug, thiserror::Error)]
#[error("cpio newc: {0} is too large for the format's 32-bit fields")]
pub struct TooLarge(pub String);

/// The archive bytes: the entries in order, then the trailer.
pub fn newc_archive(entries: &[Entry]) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| TooLarge("the entry count".into()))?;
        let nlink = if e.mode & 0o170_000 == 0o040_000 {
            2
        } else {
            1
        };
        let fixed = (ino, e.mode, nlink, FIXED_MTIME);
        write_member(&mut out, fixed, &e.name, &e.data, e.rdev)?;
    }
    write_member(&mut out, (0, 0, 1, 0), "TRAILER!!!", &[], (0, 0))?;
    Ok(out)
}

/// `(ino, mode, nlink, mtime)` are the header fields besides sizes and device numbers.
fn write_member(
    out: &mut Vec<u8>,
    (ino, mode, nlink, mtime): (u32, u32, u32, u32),
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<(), TooLarge> {
    let size = u32::try_from(data.len()).map_err(|_| TooLarge(format!("{name}'s size")))?;
    let name_size =
        u32::try_from(name.len() + 1).map_err(|_| TooLarge(format!("{name}'s name")))?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let fields = [
        ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev.0, rdev.1, name_size, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_a_newc_header_then_padded_name_and_data() -> Result<(), TooLarge> {
        let a = newc_archive(&[Entry::file("init", 0o755, b"abc".to_vec())])?;
        assert_eq!(&a[..6], b"070701");
        // header (110) + "init\0" (5) -> 115, padded to 116; data 3 -> 119, padded to 120.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..119], b"abc");
        assert_eq!(&a[120..126], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(a.len() % 4, 0);
        // mode field: regular file 0755.
        assert_eq!(&a[14..22], b"000081ED");
        Ok(())
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        let entries = [Entry::dir("bin"), Entry::char_device("dev/console", 5, 1)];
        assert_eq!(newc_archive(&entries).ok(), newc_archive(&entries).ok());
        assert!(newc_archive(&entries).is_ok());
    }
}
