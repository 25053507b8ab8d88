//! Events decoded for a person: UEFI variables, authorities, image loads, actions,
//! separators, firmware blobs and Windows' SIPA events (PCR 11-14).
//!
//! Decoding is best effort: data that does not have the expected shape is shown by size, never
//! an error (a log is evidence; we read what is there).

use super::sipa;
use super::tcg::Record;
use super::EventType;

/// EFI_GLOBAL_VARIABLE in on-disk (EFI_GUID) byte order.
const EFI_GLOBAL_VARIABLE_LE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];

/// A UEFI_VARIABLE_DATA structure, borrowed from event data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiVariable<'a> {
    /// VariableName GUID, on-disk byte order.
    pub guid: [u8; 16],
    /// UnicodeName.
    pub name: String,
    /// VariableData.
    pub data: &'a [u8],
    /// Offset of VariableData in the event data.
    pub data_offset: usize,
}

/// Reads UEFI_VARIABLE_DATA: GUID, u64 name length (UTF-16 units), u64 data length, name, data.
pub fn uefi_variable(d: &[u8]) -> Option<UefiVariable<'_>> {
    let guid: [u8; 16] = d.get(..16)?.try_into().ok()?;
    let name_len = usize::try_from(u64::from_le_bytes(d.get(16..24)?.try_into().ok()?)).ok()?;
    let data_len = usize::try_from(u64::from_le_bytes(d.get(24..32)?.try_into().ok()?)).ok()?;
    let name_end = 32usize.checked_add(name_len.checked_mul(2)?)?;
    let name16: Vec<u16> = d
        .get(32..name_end)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let name = String::from_utf16_lossy(&name16)
        .trim_end_matches('\0')
        .to_string();
    let data = d.get(name_end..name_end.checked_add(data_len)?)?;
    Some(UefiVariable {
        guid,
        name,
        data,
        data_offset: name_end,
    })
}

/// Counts EFI_SIGNATURE_LISTs and their entries: (lists, entries).
fn signature_lists(mut d: &[u8]) -> Option<(usize, usize)> {
    let (mut lists, mut entries) = (0, 0);
    while !d.is_empty() {
        let list_size = u32::from_le_bytes(d.get(16..20)?.try_into().ok()?) as usize;
        let header_size = u32::from_le_bytes(d.get(20..24)?.try_into().ok()?) as usize;
        let sig_size = u32::from_le_bytes(d.get(24..28)?.try_into().ok()?) as usize;
        if list_size < 28 || sig_size == 0 || list_size > d.len() {
            return None;
        }
        let body = list_size.checked_sub(28 + header_size)?;
        lists += 1;
        entries += body / sig_size;
        d = &d[list_size..];
    }
    Some((lists, entries))
}

/// The text of the file-path nodes of a UEFI device path (`\EFI\Microsoft\Boot\bootmgfw.efi`).
pub fn device_path_files(mut d: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while d.len() >= 4 {
        let (ty, sub) = (d[0], d[1]);
        let len = u16::from_le_bytes([d[2], d[3]]) as usize;
        if len < 4 || len > d.len() {
            break;
        }
        if ty == 4 && sub == 4 {
            let units: Vec<u16> = d[4..len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            out.push(String::from_utf16_lossy(&units));
        }
        if ty == 0x7f && sub == 0xff {
            break;
        }
        d = &d[len..];
    }
    out
}

/// The device path of a UEFI_IMAGE_LOAD_EVENT (location, length, link address, path length:
/// u64 each, then the path).
pub fn image_load_path(d: &[u8]) -> Option<&[u8]> {
    let len = usize::try_from(u64::from_le_bytes(d.get(24..32)?.try_into().ok()?)).ok()?;
    d.get(32..32usize.checked_add(len)?)
}

fn ascii(d: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(d).ok()?.trim_end_matches('\0');
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then(|| s.to_string())
}

fn variable(e: &Record) -> Option<String> {
    let v = uefi_variable(&e.data)?;
    let global = v.guid == EFI_GLOBAL_VARIABLE_LE;
    let detail = match v.name.as_str() {
        "SecureBoot" | "DeployedMode" | "AuditMode" | "SetupMode" if v.data.len() == 1 => {
            format!("={}", v.data[0])
        }
        "SecureBoot" if v.data.is_empty() => " (empty: Secure Boot not supported)".to_string(),
        "PK" | "KEK" | "db" | "dbx" | "dbt" | "dbr" | "MokList" | "MokListX"
            if e.event_type != EventType::EV_EFI_VARIABLE_AUTHORITY =>
        {
            match signature_lists(v.data) {
                Some((l, n)) => format!(": {n} entries in {l} signature lists"),
                None => format!(" ({} bytes)", v.data.len()),
            }
        }
        "BootOrder" if global => {
            let order: Vec<String> = v
                .data
                .chunks_exact(2)
                .map(|c| format!("{:04X}", u16::from_le_bytes([c[0], c[1]])))
                .collect();
            format!("={}", order.join(","))
        }
        n if global && n.starts_with("Boot") && n.len() == 8 => {
            // EFI_LOAD_OPTION: u32 attributes, u16 path length, description (UTF-16, NUL).
            let units: Vec<u16> = v
                .data
                .get(6..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            format!(" \"{}\"", String::from_utf16_lossy(&units))
        }
        _ => format!(" ({} bytes)", v.data.len()),
    };
    Some(format!("{}{detail}", v.name))
}

/// One line describing a record for a person.
pub fn describe(e: &Record) -> String {
    let t = e.event_type;
    let d = &e.data;
    let body = match t {
        EventType::EV_SEPARATOR => match d.as_slice() {
            [0, 0, 0, 0] => Some("separator".to_string()),
            [0xff, 0xff, 0xff, 0xff] => Some("separator (error)".to_string()),
            b"WBCL" => Some("separator \"WBCL\" (Windows boot configuration log)".to_string()),
            _ => Some(format!("separator ({} bytes)", d.len())),
        },
        EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
        | EventType::EV_EFI_VARIABLE_BOOT
        | EventType::EV_EFI_VARIABLE_AUTHORITY => variable(e).map(|v| {
            if t == EventType::EV_EFI_VARIABLE_AUTHORITY {
                format!("authority {v}")
            } else {
                v
            }
        }),
        EventType::EV_EFI_BOOT_SERVICES_APPLICATION | EventType::EV_EFI_BOOT_SERVICES_DRIVER => {
            let files = image_load_path(d)
                .map(device_path_files)
                .unwrap_or_default();
            Some(if files.is_empty() {
                "image load".to_string()
            } else {
                format!("image {}", files.join(" "))
            })
        }
        EventType::EV_EFI_ACTION | EventType::EV_ACTION => ascii(d).map(|s| format!("{s:?}")),
        EventType::EV_S_CRTM_VERSION => Some(match sipa::utf16_text(d) {
            Some(s) => format!("CRTM version {s:?}"),
            None => format!("CRTM version {}", hex::encode(d)),
        }),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB if d.len() == 16 => Some(format!(
            "firmware blob at {:#x}, {} bytes",
            u64::from_le_bytes(d[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(d[8..16].try_into().unwrap_or_default())
        )),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => {
            let n = d.first().map_or(0, |&n| n as usize);
            d.get(1..1 + n)
                .and_then(ascii)
                .map(|s| format!("firmware blob {s:?}"))
        }
        EventType::EV_EFI_GPT_EVENT => Some(format!("GPT partition table ({} bytes)", d.len())),
        EventType::EV_NO_ACTION if d.starts_with(b"StartupLocality\0") && d.len() == 17 => {
            Some(format!("StartupLocality {}", d[16]))
        }
        EventType::EV_NO_ACTION if d.starts_with(b"Spec ID Event") => {
            Some("Spec ID header".to_string())
        }
        EventType::EV_EVENT_TAG | EventType::EV_NO_ACTION if (11..=14).contains(&e.pcr) => {
            sipa::parse(d).ok().filter(|v| !v.is_empty()).map(|v| {
                let parts: Vec<String> = v.iter().map(|s| s.to_string()).collect();
                parts.join(", ")
            })
        }
        EventType::EV_COMPACT_HASH if d.len() == 4 => Some(format!(
            "{:#x}",
            u32::from_le_bytes([d[0], d[1], d[2], d[3]])
        )),
        EventType::EV_IPL | EventType::EV_COMPACT_HASH | EventType::EV_POST_CODE => ascii(d)
            .or_else(|| sipa::utf16_text(d))
            .map(|s| format!("{s:?}")),
        _ => None,
    };
    let body = body.unwrap_or_else(|| format!("({} bytes)", d.len()));
    format!("{t} {body}")
}
