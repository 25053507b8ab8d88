//! Event data structures of the TCG PC Client Platform Firmware Profile (PFP 1.04 s10) and
//! UEFI 2.x, built byte for byte. All integers little-endian; GUIDs in EFI_GUID order
//! (first three fields little-endian).

use uuid::{uuid, Uuid};

/// EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK, BootOrder, Boot####.
pub const EFI_GLOBAL_VARIABLE: Uuid = uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx.
pub const EFI_IMAGE_SECURITY_DATABASE: Uuid = uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");
/// EFI_CERT_X509_GUID: signature list of X.509 certificates.
pub const EFI_CERT_X509: Uuid = uuid!("a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
/// EFI_CERT_SHA256_GUID: signature list of SHA-256 hashes (dbx entries).
pub const EFI_CERT_SHA256: Uuid = uuid!("c1c41626-504c-4092-aca9-41f936934328");
/// Microsoft's signature owner GUID in db/KEK/dbx entries.
pub const MICROSOFT_OWNER: Uuid = uuid!("77fa9abd-0359-4d32-bd60-28f4e78f784b");

/// EV_EFI_ACTION string logged before the first boot option runs (EDK2).
pub const ACTION_CALLING_BOOT_OPTION: &str = "Calling EFI Application from Boot Option";
/// EV_EFI_ACTION strings logged in PCR 5 at ExitBootServices (EDK2).
pub const ACTION_EXIT_BOOT_SERVICES: &str = "Exit Boot Services Invocation";
/// See [`ACTION_EXIT_BOOT_SERVICES`].
pub const ACTION_EXIT_BOOT_SERVICES_OK: &str = "Exit Boot Services Returned with Success";

/// A GUID in on-disk (EFI_GUID) byte order.
pub fn guid_bytes(g: &Uuid) -> [u8; 16] {
    g.to_bytes_le()
}

/// UTF-16LE with a terminating NUL (EV_S_CRTM_VERSION, EV_IPL names).
pub fn utf16z(s: &str) -> Vec<u8> {
    let mut v = utf16(s);
    v.extend_from_slice(&[0, 0]);
    v
}

/// UTF-16LE without terminator.
pub fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// UEFI_PLATFORM_FIRMWARE_BLOB (EV_EFI_PLATFORM_FIRMWARE_BLOB): `u64 base, u64 length`.
pub fn firmware_blob(base: u64, length: u64) -> Vec<u8> {
    let mut v = base.to_le_bytes().to_vec();
    v.extend_from_slice(&length.to_le_bytes());
    v
}

/// UEFI_PLATFORM_FIRMWARE_BLOB2: `u8 descriptionSize, description, u64 base, u64 length`.
/// Descriptions longer than 255 bytes are cut (the size is one byte).
pub fn firmware_blob2(description: &str, base: u64, length: u64) -> Vec<u8> {
    let d = &description.as_bytes()[..description.len().min(255)];
    let mut v = Vec::with_capacity(17 + d.len());
    v.push(d.len() as u8);
    v.extend_from_slice(d);
    v.extend_from_slice(&base.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

/// UEFI_VARIABLE_DATA: `GUID, u64 UnicodeNameLength (UTF-16 units, no NUL),
/// u64 VariableDataLength, UnicodeName, VariableData`.
pub fn uefi_variable_data(guid: &Uuid, name: &str, data: &[u8]) -> Vec<u8> {
    let name16 = utf16(name);
    let mut v = Vec::with_capacity(32 + name16.len() + data.len());
    v.extend_from_slice(&guid_bytes(guid));
    v.extend_from_slice(&((name16.len() / 2) as u64).to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    v.extend_from_slice(&name16);
    v.extend_from_slice(data);
    v
}

/// EFI_SIGNATURE_DATA: `SignatureOwner GUID, SignatureData`.
pub fn efi_signature_data(owner: &Uuid, data: &[u8]) -> Vec<u8> {
    let mut v = guid_bytes(owner).to_vec();
    v.extend_from_slice(data);
    v
}

/// EFI_SIGNATURE_LIST holding `entries` (all of one size, as the format requires; entries of
/// other sizes go in their own lists, which this function makes one after another).
pub fn efi_signature_lists(sig_type: &Uuid, owner: &Uuid, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let size = entries[i].len();
        let run: Vec<&Vec<u8>> = entries[i..]
            .iter()
            .take_while(|e| e.len() == size)
            .collect();
        let sig_size = 16 + size;
        out.extend_from_slice(&guid_bytes(sig_type));
        out.extend_from_slice(&((28 + run.len() * sig_size) as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
        out.extend_from_slice(&(sig_size as u32).to_le_bytes());
        for e in &run {
            out.extend_from_slice(&efi_signature_data(owner, e));
        }
        i += run.len();
    }
    out
}

/// A device path of one media file-path node (type 4, subtype 4) and the end node.
pub fn file_device_path(path: &str) -> Vec<u8> {
    let p = utf16z(path);
    let mut v = vec![4, 4];
    v.extend_from_slice(&((4 + p.len()) as u16).to_le_bytes());
    v.extend_from_slice(&p);
    v.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    v
}

/// UEFI_IMAGE_LOAD_EVENT: `u64 ImageLocationInMemory, u64 ImageLengthInMemory,
/// u64 ImageLinkTimeAddress, u64 LengthOfDevicePath, DevicePath`.
pub fn image_load_event(
    location: u64,
    length: u64,
    link_time_address: u64,
    device_path: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + device_path.len());
    for x in [
        location,
        length,
        link_time_address,
        device_path.len() as u64,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(device_path);
    v
}

/// EFI_LOAD_OPTION (a Boot#### variable): `u32 Attributes, u16 FilePathListLength,
/// Description (UTF-16, NUL), FilePathList`. Attributes 1 = LOAD_OPTION_ACTIVE.
pub fn efi_load_option(active: bool, description: &str, device_path: &[u8]) -> Vec<u8> {
    let mut v = u32::from(active).to_le_bytes().to_vec();
    v.extend_from_slice(&(device_path.len() as u16).to_le_bytes());
    v.extend_from_slice(&utf16z(description));
    v.extend_from_slice(device_path);
    v
}

/// TCG_PCClientTaggedEvent: `u32 taggedEventID, u32 taggedEventDataSize, data`.
pub fn tagged_event(id: u32, data: &[u8]) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub unique_guid: Uuid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (at most 36 UTF-16 units; longer names are cut).
    pub name: String,
}

/// UEFI_GPT_DATA: the 92-byte EFI_PARTITION_TABLE_HEADER, `u64 NumberOfPartitions`, then the
/// 128-byte entries that are in use (PFP s10.4.4; EDK2 `Tcg2MeasureGptTable`).
pub fn gpt_event(disk_guid: &Uuid, last_lba: u64, partitions: &[GptPartition]) -> Vec<u8> {
    let mut entries = Vec::with_capacity(128 * partitions.len());
    for p in partitions {
        let mut e = [0u8; 128];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid));
        e[16..32].copy_from_slice(&guid_bytes(&p.unique_guid));
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        let name = utf16(&p.name);
        let n = name.len().min(72);
        e[56..56 + n].copy_from_slice(&name[..n]);
        entries.extend_from_slice(&e);
    }
    // The on-disk array has 128 entries; its CRC covers them all (unused ones are zero).
    let mut full_array = entries.clone();
    full_array.resize(128 * 128, 0);
    let mut h = [0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    // 16..20 header CRC, computed last; 20..24 reserved.
    h[24..32].copy_from_slice(&1u64.to_le_bytes()); // MyLBA
    h[32..40].copy_from_slice(&last_lba.to_le_bytes()); // AlternateLBA
    h[40..48].copy_from_slice(&34u64.to_le_bytes()); // FirstUsableLBA
    h[48..56].copy_from_slice(&last_lba.saturating_sub(33).to_le_bytes());
    h[56..72].copy_from_slice(&guid_bytes(disk_guid));
    h[72..80].copy_from_slice(&2u64.to_le_bytes()); // PartitionEntryLBA
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&full_array).to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut v = h.to_vec();
    v.extend_from_slice(&(partitions.len() as u64).to_le_bytes());
    v.extend_from_slice(&entries);
    v
}

/// CRC-32 (IEEE, reflected), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn variable_data_layout() {
        let v = uefi_variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]);
        assert_eq!(hex::encode(&v[..16]), "61dfe48bca93d211aa0d00e098032b8c");
        assert_eq!(u64::from_le_bytes(v[16..24].try_into().unwrap()), 10);
        assert_eq!(u64::from_le_bytes(v[24..32].try_into().unwrap()), 1);
        assert_eq!(v.len(), 32 + 20 + 1);
        assert_eq!(*v.last().unwrap(), 1);
    }

    #[test]
    fn signature_list_sizes() {
        let l = efi_signature_lists(
            &EFI_CERT_SHA256,
            &MICROSOFT_OWNER,
            &[vec![1; 32], vec![2; 32]],
        );
        assert_eq!(l.len(), 28 + 2 * 48);
        assert_eq!(u32::from_le_bytes(l[16..20].try_into().unwrap()), 124);
        assert_eq!(u32::from_le_bytes(l[24..28].try_into().unwrap()), 48);
    }
}
