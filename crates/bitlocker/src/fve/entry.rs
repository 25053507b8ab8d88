//! FVE metadata entries ("datums"): `u16 size | u16 entry type | u16 value type | u16 version`
//! then the value (libbde "FVE metadata entry"; cryptsetup `lib/bitlk/bitlk.c`).
//!
//! Parsing is total: every length is checked against the bytes that hold it, nesting is
//! bounded, and a problem names the entry's absolute offset.

use uuid::Uuid;

use super::FveError;
use crate::keywrap::{Nonce, WrappedKey, MAC_LEN, NONCE_LEN};
use crate::KeyProtectorId;

/// Length of an entry header.
pub const ENTRY_HEADER_LEN: usize = 8;
/// Deepest nesting we accept (Windows uses 3: VMK > stretch key > AES-CCM).
pub const MAX_DEPTH: usize = 6;

/// Entry types (libbde "FVE metadata entry types").
pub mod entry_type {
    /// A property inside another entry.
    pub const PROPERTY: u16 = 0x0000;
    /// A volume master key protector.
    pub const VMK: u16 = 0x0002;
    /// The full-volume encryption key, wrapped by the VMK.
    pub const FVEK: u16 = 0x0003;
    /// A startup key (in a .BEK file).
    pub const STARTUP_KEY: u16 = 0x0006;
    /// The volume description (computer name, drive, date).
    pub const DESCRIPTION: u16 = 0x0007;
    /// Where the encrypted copy of the first sectors lives.
    pub const VOLUME_HEADER: u16 = 0x000f;
}

/// Value types (libbde "FVE metadata value types").
pub mod value_type {
    /// Erased.
    pub const ERASED: u16 = 0x0000;
    /// Key: `u32 method | key bytes`.
    pub const KEY: u16 = 0x0001;
    /// UTF-16LE string with a terminating NUL.
    pub const STRING: u16 = 0x0002;
    /// Stretch key: `u32 method | salt[16] | entries`.
    pub const STRETCH_KEY: u16 = 0x0003;
    /// Use key: `u32 method | entries`.
    pub const USE_KEY: u16 = 0x0004;
    /// AES-CCM encrypted key: `nonce[12] | mac[16] | ciphertext`.
    pub const AES_CCM: u16 = 0x0005;
    /// TPM-encoded key (opaque here).
    pub const TPM_KEY: u16 = 0x0006;
    /// Volume master key: `guid[16] | filetime | u16 | u16 protection | entries`.
    pub const VMK: u16 = 0x0008;
    /// External key: `guid[16] | filetime | entries`.
    pub const EXTERNAL_KEY: u16 = 0x0009;
    /// Offset and size: `u64 offset | u64 size | extra`.
    pub const OFFSET_SIZE: u16 = 0x000f;
}

/// An entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A key in clear: encryption method and key bytes.
    Key {
        /// Encryption method code.
        method: u32,
        /// Key bytes.
        key: Vec<u8>,
    },
    /// A string (decoded from UTF-16LE, NUL removed).
    String(String),
    /// A stretch key: method, salt, nested entries.
    StretchKey {
        /// Method code (0x1000 recovery password, 0x1001 password).
        method: u32,
        /// Stretch salt.
        salt: [u8; 16],
        /// Nested entries.
        nested: Vec<Entry>,
    },
    /// A use key: method and nested entries.
    UseKey {
        /// Method code.
        method: u32,
        /// Nested entries.
        nested: Vec<Entry>,
    },
    /// An AES-CCM wrapped key.
    AesCcm(WrappedKey),
    /// A TPM-encoded key, opaque.
    TpmKey(Vec<u8>),
    /// A volume master key protector.
    Vmk {
        /// Key protector ID.
        id: KeyProtectorId,
        /// Last modification, FILETIME.
        modified: u64,
        /// Unknown u16 (0 on every image we have).
        unknown: u16,
        /// Protection type code (0x0800 recovery password, ...).
        protection: u16,
        /// Properties.
        properties: Vec<Entry>,
    },
    /// An external key (in .BEK files).
    ExternalKey {
        /// Key ID (the startup-key protector's ID).
        id: KeyProtectorId,
        /// FILETIME.
        modified: u64,
        /// Properties.
        properties: Vec<Entry>,
    },
    /// Offset and size (the volume header block).
    OffsetSize {
        /// Byte offset.
        offset: u64,
        /// Byte size.
        size: u64,
        /// Data after the two values (Windows 8+ extended info), kept as is.
        extra: Vec<u8>,
    },
    /// Any other value type, kept as raw bytes.
    Other {
        /// Value type code.
        value_type: u16,
        /// Raw data after the header.
        data: Vec<u8>,
    },
}

/// One FVE metadata entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry type (see [`entry_type`]).
    pub entry_type: u16,
    /// Version (1 on every Windows 7+ image).
    pub version: u16,
    /// The value.
    pub value: Value,
    /// Absolute offset where it was read (0 for entries built in memory).
    pub offset: u64,
}

impl Entry {
    /// A new property entry (entry type 0, version 1).
    pub fn property(value: Value) -> Self {
        Self::new(entry_type::PROPERTY, value)
    }

    /// A new entry of `entry_type`, version 1.
    pub fn new(entry_type: u16, value: Value) -> Self {
        Self {
            entry_type,
            version: 1,
            value,
            offset: 0,
        }
    }

    /// The value type code.
    pub fn value_type(&self) -> u16 {
        match &self.value {
            Value::Key { .. } => value_type::KEY,
            Value::String(_) => value_type::STRING,
            Value::StretchKey { .. } => value_type::STRETCH_KEY,
            Value::UseKey { .. } => value_type::USE_KEY,
            Value::AesCcm(_) => value_type::AES_CCM,
            Value::TpmKey(_) => value_type::TPM_KEY,
            Value::Vmk { .. } => value_type::VMK,
            Value::ExternalKey { .. } => value_type::EXTERNAL_KEY,
            Value::OffsetSize { .. } => value_type::OFFSET_SIZE,
            Value::Other { value_type, .. } => *value_type,
        }
    }

    /// Serialises the entry.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FveError> {
        let mut data = Vec::new();
        match &self.value {
            Value::Key { method, key } => {
                data.extend_from_slice(&method.to_le_bytes());
                data.extend_from_slice(key);
            }
            Value::String(s) => {
                for u in s.encode_utf16().chain(std::iter::once(0)) {
                    data.extend_from_slice(&u.to_le_bytes());
                }
            }
            Value::StretchKey {
                method,
                salt,
                nested,
            } => {
                data.extend_from_slice(&method.to_le_bytes());
                data.extend_from_slice(salt);
                data.extend_from_slice(&entries_to_bytes(nested)?);
            }
            Value::UseKey { method, nested } => {
                data.extend_from_slice(&method.to_le_bytes());
                data.extend_from_slice(&entries_to_bytes(nested)?);
            }
            Value::AesCcm(w) => {
                data.extend_from_slice(&w.nonce.0);
                data.extend_from_slice(&w.mac);
                data.extend_from_slice(&w.ciphertext);
            }
            Value::TpmKey(raw) => data.extend_from_slice(raw),
            Value::Vmk {
                id,
                modified,
                unknown,
                protection,
                properties,
            } => {
                data.extend_from_slice(&id.to_disk_bytes());
                data.extend_from_slice(&modified.to_le_bytes());
                data.extend_from_slice(&unknown.to_le_bytes());
                data.extend_from_slice(&protection.to_le_bytes());
                data.extend_from_slice(&entries_to_bytes(properties)?);
            }
            Value::ExternalKey {
                id,
                modified,
                properties,
            } => {
                data.extend_from_slice(&id.to_disk_bytes());
                data.extend_from_slice(&modified.to_le_bytes());
                data.extend_from_slice(&entries_to_bytes(properties)?);
            }
            Value::OffsetSize {
                offset,
                size,
                extra,
            } => {
                data.extend_from_slice(&offset.to_le_bytes());
                data.extend_from_slice(&size.to_le_bytes());
                data.extend_from_slice(extra);
            }
            Value::Other { data: raw, .. } => data.extend_from_slice(raw),
        }
        let total = ENTRY_HEADER_LEN + data.len();
        let size = u16::try_from(total).map_err(|_| FveError::TooLarge {
            structure: "FVE metadata entry",
            size: total as u64,
            limit: u64::from(u16::MAX),
        })?;
        let mut out = Vec::with_capacity(total);
        for v in [size, self.entry_type, self.value_type(), self.version] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Nested entries (VMK properties, stretch/use key contents, external key properties).
    pub fn children(&self) -> &[Entry] {
        match &self.value {
            Value::StretchKey { nested, .. } | Value::UseKey { nested, .. } => nested,
            Value::Vmk { properties, .. } | Value::ExternalKey { properties, .. } => properties,
            _ => &[],
        }
    }
}

/// Serialises a list of entries back to back.
pub fn entries_to_bytes(entries: &[Entry]) -> Result<Vec<u8>, FveError> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.to_bytes()?);
    }
    Ok(out)
}

fn malformed(offset: u64, problem: impl Into<String>) -> FveError {
    FveError::Malformed {
        structure: "FVE metadata entry",
        offset,
        problem: problem.into(),
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    match b.get(i..i + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(i..i + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(i..i + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], i: usize) -> KeyProtectorId {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(i..i + 16) {
        a.copy_from_slice(s);
    }
    KeyProtectorId::from_disk_bytes(a)
}

/// A volume GUID from its 16 on-disk bytes.
pub fn volume_guid(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(bytes)
}

/// Parses entries back to back in `buf`, whose first byte is at absolute offset `base`.
/// A zero size ends the list (Windows pads with zeros).
pub fn parse_entries(buf: &[u8], base: u64, depth: usize) -> Result<Vec<Entry>, FveError> {
    if depth > MAX_DEPTH {
        return Err(malformed(
            base,
            format!("entries nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while buf.len() - pos >= ENTRY_HEADER_LEN {
        let at = base + pos as u64;
        let size = usize::from(u16_at(buf, pos));
        if size == 0 {
            break;
        }
        if size < ENTRY_HEADER_LEN {
            return Err(malformed(
                at,
                format!("size {size} is smaller than the 8-byte entry header"),
            ));
        }
        if size > buf.len() - pos {
            return Err(malformed(
                at,
                format!(
                    "size {size} runs past the end of its container ({} bytes left)",
                    buf.len() - pos
                ),
            ));
        }
        let e = &buf[pos..pos + size];
        out.push(parse_one(e, at, depth)?);
        pos += size;
    }
    Ok(out)
}

fn parse_one(e: &[u8], at: u64, depth: usize) -> Result<Entry, FveError> {
    let entry_type = u16_at(e, 2);
    let vt = u16_at(e, 4);
    let version = u16_at(e, 6);
    let d = &e[ENTRY_HEADER_LEN..];
    let dat = at + ENTRY_HEADER_LEN as u64;
    let need = |n: usize, what: &str| -> Result<(), FveError> {
        if d.len() < n {
            Err(malformed(
                at,
                format!(
                    "{what} value needs at least {n} data bytes, entry has {}",
                    d.len()
                ),
            ))
        } else {
            Ok(())
        }
    };
    let value = match vt {
        value_type::KEY => {
            need(4, "key")?;
            Value::Key {
                method: u32_at(d, 0),
                key: d[4..].to_vec(),
            }
        }
        value_type::STRING => {
            if d.len() % 2 != 0 {
                return Err(malformed(at, "UTF-16 string has an odd byte length"));
            }
            let units: Vec<u16> = d
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            Value::String(String::from_utf16_lossy(&units))
        }
        value_type::STRETCH_KEY => {
            need(20, "stretch key")?;
            let mut salt = [0u8; 16];
            salt.copy_from_slice(&d[4..20]);
            Value::StretchKey {
                method: u32_at(d, 0),
                salt,
                nested: parse_entries(&d[20..], dat + 20, depth + 1)?,
            }
        }
        value_type::USE_KEY => {
            need(4, "use key")?;
            Value::UseKey {
                method: u32_at(d, 0),
                nested: parse_entries(&d[4..], dat + 4, depth + 1)?,
            }
        }
        value_type::AES_CCM => {
            need(NONCE_LEN + MAC_LEN, "AES-CCM encrypted key")?;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&d[..NONCE_LEN]);
            let mut mac = [0u8; MAC_LEN];
            mac.copy_from_slice(&d[NONCE_LEN..NONCE_LEN + MAC_LEN]);
            Value::AesCcm(WrappedKey {
                nonce: Nonce(nonce),
                mac,
                ciphertext: d[NONCE_LEN + MAC_LEN..].to_vec(),
            })
        }
        value_type::TPM_KEY => Value::TpmKey(d.to_vec()),
        value_type::VMK => {
            need(28, "volume master key")?;
            Value::Vmk {
                id: guid_at(d, 0),
                modified: u64_at(d, 16),
                unknown: u16_at(d, 24),
                protection: u16_at(d, 26),
                properties: parse_entries(&d[28..], dat + 28, depth + 1)?,
            }
        }
        value_type::EXTERNAL_KEY => {
            need(24, "external key")?;
            Value::ExternalKey {
                id: guid_at(d, 0),
                modified: u64_at(d, 16),
                properties: parse_entries(&d[24..], dat + 24, depth + 1)?,
            }
        }
        value_type::OFFSET_SIZE => {
            need(16, "offset and size")?;
            Value::OffsetSize {
                offset: u64_at(d, 0),
                size: u64_at(d, 8),
                extra: d[16..].to_vec(),
            }
        }
        other => Value::Other {
            value_type: other,
            data: d.to_vec(),
        },
    };
    Ok(Entry {
        entry_type,
        version,
        value,
        offset: at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trip_nested() {
        let e = Entry::new(
            entry_type::VMK,
            Value::Vmk {
                id: KeyProtectorId::from_disk_bytes([7; 16]),
                modified: 5,
                unknown: 0,
                protection: 0x0800,
                properties: vec![
                    Entry::property(Value::String("DiskPassword".into())),
                    Entry::property(Value::StretchKey {
                        method: 0x1000,
                        salt: [1; 16],
                        nested: vec![],
                    }),
                ],
            },
        );
        let b = e.to_bytes().unwrap();
        assert_eq!(usize::from(u16_at(&b, 0)), b.len());
        let back = parse_entries(&b, 100, 0).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].offset, 100);
        assert_eq!(back[0].to_bytes().unwrap(), b);
    }

    #[test]
    fn bad_sizes_name_the_offset() {
        let mut b = vec![0u8; 16];
        b[0] = 4;
        b[2] = 2;
        let err = parse_entries(&b, 0x1000, 0).unwrap_err().to_string();
        assert!(err.contains("0x1000"), "{err}");
        b[0] = 40;
        let err = parse_entries(&b, 0x1000, 0).unwrap_err().to_string();
        assert!(err.contains("runs past"), "{err}");
    }
}
