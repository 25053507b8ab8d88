//! Windows' SIPA events: what the boot manager and loader log in PCR 11-14 as EV_EVENT_TAG
//! (and EV_NO_ACTION) data.
//!
//! The data is a sequence of `{ u32 type, u32 size, payload[size] }`, little-endian; types
//! whose class (`type & 0x000F0000`) is `0x00010000` are containers whose payload is again such
//! a sequence. Names follow Microsoft's `wbcl.h` (`SIPAEVENT_*`) as used by open-source parsers
//! (google/go-attestation `attest/win_events.go`, Apache-2.0); unknown types are shown as
//! numbers.

use std::fmt;

use serde::Serialize;

/// Nesting deeper than this is refused (real logs nest two or three levels).
const MAX_DEPTH: usize = 8;

/// SIPA event types with a name (`SIPAEVENT_*`, without the prefix).
const NAMES: &[(u32, &str)] = &[
    (0x4001_0001, "TRUSTBOUNDARY"),
    (0x4001_0002, "ELAM_AGGREGATION"),
    (0x4001_0003, "LOADEDMODULE_AGGREGATION"),
    (0xC001_0004, "TRUSTPOINT_AGGREGATION"),
    (0x4001_0005, "KSR_AGGREGATION"),
    (0x4001_0006, "KSR_SIGNED_MEASUREMENT_AGGREGATION"),
    (0x0002_0001, "INFORMATION"),
    (0x0002_0002, "BOOTCOUNTER"),
    (0x0002_0003, "TRANSFER_CONTROL"),
    (0x0002_0004, "APPLICATION_RETURN"),
    (0x0002_0005, "BITLOCKER_UNLOCK"),
    (0x0002_0006, "EVENTCOUNTER"),
    (0x0002_0007, "COUNTERID"),
    (0x0002_0008, "MORBIT_NOT_CANCELABLE"),
    (0x0002_0009, "APPLICATION_SVN"),
    (0x0002_000A, "SVN_CHAIN_STATUS"),
    (0x0002_000B, "MORBIT_API_STATUS"),
    (0x0004_0001, "BOOTDEBUGGING"),
    (0x0004_0002, "BOOT_REVOCATION_LIST"),
    (0x0005_0001, "OSKERNELDEBUG"),
    (0x0005_0002, "CODEINTEGRITY"),
    (0x0005_0003, "TESTSIGNING"),
    (0x0005_0004, "DATAEXECUTIONPREVENTION"),
    (0x0005_0005, "SAFEMODE"),
    (0x0005_0006, "WINPE"),
    (0x0005_0007, "PHYSICALADDRESSEXTENSION"),
    (0x0005_0008, "OSDEVICE"),
    (0x0005_0009, "SYSTEMROOT"),
    (0x0005_000A, "HYPERVISOR_LAUNCH_TYPE"),
    (0x0005_000B, "HYPERVISOR_PATH"),
    (0x0005_000C, "HYPERVISOR_IOMMU_POLICY"),
    (0x0005_000D, "HYPERVISOR_DEBUG"),
    (0x0005_000E, "DRIVER_LOAD_POLICY"),
    (0x0005_000F, "SI_POLICY"),
    (0x0005_0010, "HYPERVISOR_MMIO_NX_POLICY"),
    (0x0005_0011, "HYPERVISOR_MSR_FILTER_POLICY"),
    (0x0005_0012, "VSM_LAUNCH_TYPE"),
    (0x0005_0013, "OS_REVOCATION_LIST"),
    (0x0005_0020, "VSM_IDK_INFO"),
    (0x0005_0021, "FLIGHTSIGNING"),
    (0x0005_0022, "PAGEFILE_ENCRYPTION_ENABLED"),
    (0x0005_0023, "VSM_IDKS_INFO"),
    (0x0005_0024, "HIBERNATION_DISABLED"),
    (0x0005_0025, "DUMPS_DISABLED"),
    (0x0005_0026, "DUMP_ENCRYPTION_ENABLED"),
    (0x0005_0027, "DUMP_ENCRYPTION_KEY_DIGEST"),
    (0x0005_0028, "LSAISO_CONFIG"),
    (0x0006_0001, "NOAUTHORITY"),
    (0x0006_0002, "AUTHORITYPUBKEY"),
    (0x0007_0001, "FILEPATH"),
    (0x0007_0002, "IMAGESIZE"),
    (0x0007_0003, "HASHALGORITHMID"),
    (0x0007_0004, "AUTHENTICODEHASH"),
    (0x0007_0005, "AUTHORITYISSUER"),
    (0x0007_0006, "AUTHORITYSERIAL"),
    (0x0007_0007, "IMAGEBASE"),
    (0x0007_0008, "AUTHORITYPUBLISHER"),
    (0x0007_0009, "AUTHORITYSHA1THUMBPRINT"),
    (0x0007_000A, "IMAGEVALIDATED"),
    (0x0007_000B, "MODULE_SVN"),
    (0x8008_0001, "QUOTE"),
    (0x8008_0002, "QUOTESIGNATURE"),
    (0x8008_0003, "AIKID"),
    (0x8008_0004, "AIKPUBDIGEST"),
    (0x0009_0001, "ELAM_KEYNAME"),
    (0x0009_0002, "ELAM_CONFIGURATION"),
    (0x0009_0003, "ELAM_POLICY"),
    (0x0009_0004, "ELAM_MEASURED"),
    (0x000A_0001, "VBS_VSM_REQUIRED"),
    (0x000A_0002, "VBS_SECUREBOOT_REQUIRED"),
    (0x000A_0003, "VBS_IOMMU_REQUIRED"),
    (0x000A_0004, "VBS_NX_REQUIRED"),
    (0x000A_0005, "VBS_MSR_FILTERING_REQUIRED"),
    (0x000A_0006, "VBS_MANDATORY_ENFORCEMENT"),
    (0x000A_0007, "VBS_HVCI_POLICY"),
    (0x000A_0008, "VBS_MICROSOFT_BOOT_CHAIN_REQUIRED"),
    (0x000B_0001, "KSR_SIGNATURE"),
];

/// `SIPAEVENT_BOOTDEBUGGING`: one byte, boot debugging enabled.
pub const BOOTDEBUGGING: u32 = 0x0004_0001;
/// `SIPAEVENT_BITLOCKER_UNLOCK`: how the volume was unlocked (flags, see [`describe_unlock`]).
pub const BITLOCKER_UNLOCK: u32 = 0x0002_0005;
/// `SIPAEVENT_BOOTCOUNTER`: the boot counter (u64).
pub const BOOTCOUNTER: u32 = 0x0002_0002;

/// The `SIPAEVENT_*` name of a type, without the prefix.
pub fn name(tag: u32) -> Option<&'static str> {
    NAMES.iter().find(|(t, _)| *t == tag).map(|(_, n)| *n)
}

fn is_container(tag: u32) -> bool {
    tag & 0x000F_0000 == 0x0001_0000
}

/// One SIPA event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SipaEvent {
    /// The type (`SIPAEVENT_*` value).
    pub tag: u32,
    /// Byte offset of the event in the EV_EVENT_TAG data.
    pub offset: usize,
    /// The payload (empty for containers, whose content is in `children`).
    #[serde(with = "hex::serde")]
    pub payload: Vec<u8>,
    /// Contained events (containers only).
    pub children: Vec<SipaEvent>,
}

/// Why event data is not a SIPA sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SIPA data at byte {offset}: {reason}")]
pub struct SipaError {
    /// Offset in the event data.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses EV_EVENT_TAG data as SIPA events.
pub fn parse(data: &[u8]) -> Result<Vec<SipaEvent>, SipaError> {
    parse_at(data, 0, 0)
}

fn parse_at(data: &[u8], base: usize, depth: usize) -> Result<Vec<SipaEvent>, SipaError> {
    if depth > MAX_DEPTH {
        return Err(SipaError {
            offset: base,
            reason: format!("containers nested deeper than {MAX_DEPTH}"),
        });
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let head = data.get(pos..pos + 8).ok_or_else(|| SipaError {
            offset: base + pos,
            reason: format!("{} bytes left, an event header needs 8", data.len() - pos),
        })?;
        let tag = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = data
            .get(pos + 8..(pos + 8).saturating_add(size))
            .ok_or_else(|| SipaError {
                offset: base + pos + 4,
                reason: format!(
                    "event {tag:#010x} of {size} bytes, {} left",
                    data.len() - pos - 8
                ),
            })?;
        let (payload, children) = if is_container(tag) {
            (Vec::new(), parse_at(body, base + pos + 8, depth + 1)?)
        } else {
            (body.to_vec(), Vec::new())
        };
        out.push(SipaEvent {
            tag,
            offset: base + pos,
            payload,
            children,
        });
        pos += 8 + size;
    }
    Ok(out)
}

/// `SIPAEVENT_BITLOCKER_UNLOCK` flags (go-attestation `BitlockerStatus*`).
pub fn describe_unlock(flags: u64) -> String {
    let names = [
        (0x01, "cached"),
        (0x02, "media"),
        (0x04, "tpm"),
        (0x10, "pin"),
        (0x20, "external"),
        (0x40, "recovery"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        format!("none ({flags:#x})")
    } else {
        format!("{} ({flags:#x})", set.join("+"))
    }
}

impl SipaEvent {
    /// The payload as a little-endian integer, if it is 1, 2, 4 or 8 bytes.
    pub fn int(&self) -> Option<u64> {
        match self.payload.len() {
            1 | 2 | 4 | 8 => {
                let mut b = [0u8; 8];
                b[..self.payload.len()].copy_from_slice(&self.payload);
                Some(u64::from_le_bytes(b))
            }
            _ => None,
        }
    }

    /// All events of this tree (self first, depth first).
    pub fn walk(&self) -> Vec<&SipaEvent> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

impl fmt::Display for SipaEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.tag) {
            Some(n) => f.write_str(n)?,
            None => write!(f, "SIPA {:#010x}", self.tag)?,
        }
        if !self.children.is_empty() {
            let inner: Vec<String> = self.children.iter().map(|c| c.to_string()).collect();
            return write!(f, "[{}]", inner.join(", "));
        }
        let text = utf16_text(&self.payload);
        match (self.tag, self.int()) {
            (BITLOCKER_UNLOCK, Some(v)) => write!(f, "={}", describe_unlock(v)),
            (_, Some(v)) => write!(f, "={v}"),
            _ => match text {
                Some(s) => write!(f, "={s:?}"),
                None if self.payload.len() <= 32 => {
                    write!(f, "={}", hex::encode(&self.payload))
                }
                None => write!(f, " ({} bytes)", self.payload.len()),
            },
        }
    }
}

/// NUL-terminated UTF-16LE text of printable characters, if the bytes are that.
pub fn utf16_text(b: &[u8]) -> Option<String> {
    if b.len() < 4 || b.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let units = match units.iter().position(|&u| u == 0) {
        Some(end) if units[end..].iter().all(|&u| u == 0) => &units[..end],
        Some(_) => return None,
        None => &units[..],
    };
    let s = String::from_utf16(units).ok()?;
    // Printable ASCII only: binary payloads (hashes) often decode as valid UTF-16 too.
    (!s.is_empty() && s.chars().all(|c| (' '..='~').contains(&c))).then_some(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ev(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn nested_containers_and_names() {
        let inner = [ev(BOOTDEBUGGING, &[1]), ev(0x0005_0002, &[1])].concat();
        let data = [ev(0x4001_0001, &inner), ev(0x0002_0005, &[0x14, 0, 0, 0])].concat();
        let got = parse(&data).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].children.len(), 2);
        assert_eq!(
            got[0].to_string(),
            "TRUSTBOUNDARY[BOOTDEBUGGING=1, CODEINTEGRITY=1]"
        );
        assert_eq!(got[1].to_string(), "BITLOCKER_UNLOCK=tpm+pin (0x14)");
        assert_eq!(
            parse(&data[..data.len() - 1]).unwrap_err().offset,
            4 + 8 + inner.len()
        );
    }
}
