//! Seeded, reproducible key-protector-ID / recovery-password pairs for scale tests.
//!
//! `harness keys generate --count N --seed S --out FILE` writes the portal's bulk import
//! format (JSON Lines, `portal-under-test/API.md`, "import FILE"): every password is valid
//! (each block `11 * k`), every ID a random GUID. The stream is ChaCha8 from the seed, so the
//! same seed gives the same file on any machine and release.
//!
//! Written for throughput (millions of records a second): one RNG draw per field, digits
//! formatted by hand into a reused buffer, no per-record allocation.

use std::io::{self, Write};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What the generated records look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetSpec {
    /// How many records.
    pub count: u64,
    /// The RNG seed: same seed, same records.
    pub seed: u64,
    /// Recovery keys per device (devices are `PC-00000000`, `PC-00000001`, ...).
    pub keys_per_device: u64,
    /// Distinct users; device `d` is associated with user `d % users` (0 = no user field).
    pub users: u64,
    /// The domain part of user names (`CONTOSO\user00000042`).
    pub domain: String,
}

impl Default for KeySetSpec {
    fn default() -> Self {
        KeySetSpec {
            count: 1000,
            seed: 1,
            keys_per_device: 1,
            users: 1000,
            domain: "CONTOSO".to_string(),
        }
    }
}

/// One generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// Device index (name `PC-{index:08}`).
    pub device: u64,
    /// User index, if any (name `{domain}\user{index:08}`).
    pub user: Option<u64>,
    /// Volume GUID, display order.
    pub volume_id: [u8; 16],
    /// Key protector GUID, display order.
    pub key_protector_id: [u8; 16],
    /// The eight 16-bit values behind the 48 digits (block = 11 * value).
    pub password_values: [u16; 8],
}

/// An iterator over the records of a [`KeySetSpec`].
#[derive(Debug)]
pub struct KeyGenerator {
    rng: ChaCha8Rng,
    spec: KeySetSpec,
    next: u64,
}

impl KeyGenerator {
    /// Starts the stream for `spec`.
    pub fn new(spec: KeySetSpec) -> Self {
        KeyGenerator {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            spec,
            next: 0,
        }
    }
}

impl Iterator for KeyGenerator {
    type Item = GeneratedKey;

    fn next(&mut self) -> Option<GeneratedKey> {
        if self.next >= self.spec.count {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let device = index / self.spec.keys_per_device.max(1);
        let user = (self.spec.users > 0).then(|| device % self.spec.users);
        let mut volume_id = [0u8; 16];
        let mut key_protector_id = [0u8; 16];
        let mut password = [0u8; 16];
        self.rng.fill_bytes(&mut volume_id);
        self.rng.fill_bytes(&mut key_protector_id);
        self.rng.fill_bytes(&mut password);
        set_uuid_v4_bits(&mut volume_id);
        set_uuid_v4_bits(&mut key_protector_id);
        let mut password_values = [0u16; 8];
        for (value, pair) in password_values.iter_mut().zip(password.chunks_exact(2)) {
            *value = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(GeneratedKey {
            device,
            user,
            volume_id,
            key_protector_id,
            password_values,
        })
    }
}

/// Random GUIDs are RFC 4122 version 4, as Windows makes them.
fn set_uuid_v4_bits(id: &mut [u8; 16]) {
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
}

/// Writes `spec`'s records as the portal's bulk import JSON Lines. Returns the count.
pub fn write_jsonl<W: Write>(spec: &KeySetSpec, out: W) -> io::Result<u64> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let mut line = Vec::with_capacity(320);
    let mut written = 0;
    for key in KeyGenerator::new(spec.clone()) {
        line.clear();
        format_record(&key, &spec.domain, &mut line);
        out.write_all(&line)?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

/// One JSON object and a newline. Only digits, hex and the (escaped) domain are variable,
/// so no general JSON escaping is needed beyond the domain.
pub fn format_record(key: &GeneratedKey, domain: &str, line: &mut Vec<u8>) {
    line.extend_from_slice(b"{\"device\":\"PC-");
    push_decimal(line, key.device, 8);
    line.push(b'"');
    if let Some(user) = key.user {
        line.extend_from_slice(b",\"user\":\"");
        push_json_escaped(line, domain);
        line.extend_from_slice(b"\\\\user");
        push_decimal(line, user, 8);
        line.push(b'"');
    }
    line.extend_from_slice(b",\"volume_id\":\"");
    push_guid(line, &key.volume_id);
    line.extend_from_slice(b"\",\"key_protector_id\":\"{");
    push_guid(line, &key.key_protector_id);
    line.extend_from_slice(b"}\",\"recovery_password\":\"");
    for (i, value) in key.password_values.iter().enumerate() {
        if i > 0 {
            line.push(b'-');
        }
        push_decimal(line, u64::from(*value) * 11, 6);
    }
    line.extend_from_slice(b"\",\"protector_type\":\"recovery_password\"}\n");
}

/// The display form `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, upper case.
fn push_guid(line: &mut Vec<u8>, id: &[u8; 16]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, byte) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            line.push(b'-');
        }
        line.push(HEX[usize::from(byte >> 4)]);
        line.push(HEX[usize::from(byte & 0x0f)]);
    }
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_decimal(line: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        value /= 10;
        n += 1;
        if value == 0 {
            break;
        }
    }
    for _ in n..width {
        line.push(b'0');
    }
    line.extend(digits[..n].iter().rev());
}

fn push_json_escaped(line: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '"' => line.extend_from_slice(b"\\\""),
            '\\' => line.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                line.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                line.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bitlocker::{KeyProtectorId, RecoveryPassword};

    fn spec(count: u64, seed: u64) -> KeySetSpec {
        KeySetSpec {
            count,
            seed,
            keys_per_device: 2,
            users: 3,
            ..KeySetSpec::default()
        }
    }

    fn lines(spec: &KeySetSpec) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        assert_eq!(write_jsonl(spec, &mut out).unwrap(), spec.count);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_valid_json_with_valid_passwords_and_guids() {
        let records = lines(&spec(500, 7));
        assert_eq!(records.len(), 500);
        for (i, r) in records.iter().enumerate() {
            let pw = r["recovery_password"].as_str().unwrap();
            RecoveryPassword::parse(pw).unwrap_or_else(|e| panic!("record {i}: {pw}: {e}"));
            let id = r["key_protector_id"].as_str().unwrap();
            let parsed: KeyProtectorId = id.parse().unwrap();
            assert_eq!(parsed.to_string(), id);
            assert_eq!(r["device"], format!("PC-{:08}", i / 2));
            assert_eq!(r["user"], format!("CONTOSO\\user{:08}", (i / 2) % 3));
            assert_eq!(r["protector_type"], "recovery_password");
            uuid::Uuid::parse_str(r["volume_id"].as_str().unwrap()).unwrap();
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_records_and_another_seed_others() {
        assert_eq!(lines(&spec(50, 42)), lines(&spec(50, 42)));
        assert_ne!(lines(&spec(50, 42)), lines(&spec(50, 43)));
        // A prefix of a longer run is the shorter run: records do not depend on the count.
        assert_eq!(lines(&spec(100, 42))[..50], lines(&spec(50, 42))[..]);
    }

    #[test]
    fn no_user_field_when_users_is_zero() {
        let records = lines(&KeySetSpec {
            users: 0,
            ..spec(3, 1)
        });
        assert!(records.iter().all(|r| r.get("user").is_none()));
    }
}
