//! The fleet's devices, drawn from the seed: names, users, key material and which devices
//! lock out (and through which route they recover). The same seed gives the same plan.

use bitlocker::keywrap::Nonce;
use bitlocker::{KeyProtectorId, RecoveryPassword, Salt};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::keys::{GeneratedKey, KeyGenerator, KeySetSpec};

/// How a locked-out device's user gets the recovery password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The help desk JSON lookup (API.md §5), by a help desk account's API token.
    HelpDesk,
    /// The end user at `/SelfService`, played as a browser without JavaScript.
    SelfService,
}

/// One recovery-password protector's escrowed identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// Volume GUID, display form without braces.
    pub volume_id: String,
    pub key_protector_id: KeyProtectorId,
    pub password: RecoveryPassword,
}

/// One simulated device of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    pub index: usize,
    /// `fleet-s{seed}-{index:06}`.
    pub name: String,
    /// The device's user (`fleet.s{seed}.u{index:06}`) and that account's password.
    pub user: String,
    pub user_password: String,
    /// The recovery password escrowed at enrollment.
    pub key: DeviceKey,
    /// The protector's salt and the AES-CCM nonce of its wrapped volume master key.
    pub salt: Salt,
    pub nonce: Nonce,
    /// The volume master key the recovery password protects.
    pub vmk: [u8; 32],
    /// `Some` for the devices that lock out.
    pub recovery: Option<Route>,
    /// A locked-out device played as a real machine on its own swtpm (`--tpm-sample`).
    pub on_tpm: bool,
    /// The recovery password the device rotates to after its key was shown.
    pub next_key: DeviceKey,
}

/// `devices` devices, `recoveries` of them locking out (alternately help desk and
/// self-service, in the order drawn), the first `tpm_sample` drawn on a real swtpm.
/// `recoveries` is capped at `devices`, `tpm_sample` at `recoveries`.
pub fn plan(seed: u64, devices: usize, recoveries: usize, tpm_sample: usize) -> Vec<PlannedDevice> {
    // Two keys per device from the bulk generator: the escrowed one and its rotation.
    let spec = KeySetSpec {
        count: 2 * devices as u64,
        seed,
        keys_per_device: 2,
        users: 0,
        ..KeySetSpec::default()
    };
    let mut keys = KeyGenerator::new(spec);
    let mut routes = vec![None; devices];
    let mut on_tpm = vec![false; devices];
    let mut chooser = ChaCha8Rng::seed_from_u64(seed);
    let chosen = rand::seq::index::sample(&mut chooser, devices, recoveries.min(devices));
    for (i, device) in chosen.iter().enumerate() {
        routes[device] = Some(if i % 2 == 0 {
            Route::HelpDesk
        } else {
            Route::SelfService
        });
        on_tpm[device] = i < tpm_sample;
    }
    let mut planned = Vec::with_capacity(devices);
    for (index, (recovery, on_tpm)) in routes.into_iter().zip(on_tpm).enumerate() {
        let (Some(first), Some(second)) = (keys.next(), keys.next()) else {
            break;
        };
        // The protector's secrets come from a stream of their own per device.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1 + index as u64);
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut vmk = [0u8; 32];
        rng.fill_bytes(&mut vmk);
        let nonce = Nonce::new(rng.random(), rng.random());
        planned.push(PlannedDevice {
            index,
            name: format!("fleet-s{seed}-{index:06}"),
            user: format!("fleet.s{seed}.u{index:06}"),
            user_password: account_password(&mut rng),
            key: device_key(&first),
            salt,
            nonce,
            vmk,
            recovery,
            on_tpm,
            next_key: device_key(&second),
        });
    }
    planned
}

/// The key `device` rotates to the `generation`-th time during a soak (1, 2, ...): a new
/// key protector ID and recovery password on the same volume, from the seed.
pub fn soak_key(seed: u64, device: &PlannedDevice, generation: u32) -> DeviceKey {
    // A seed of its own, so these never repeat the plan's streams.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    rng.set_stream((u64::from(generation) << 32) | device.index as u64);
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let mut key16 = [0u8; 16];
    rng.fill_bytes(&mut key16);
    DeviceKey {
        volume_id: device.key.volume_id.clone(),
        key_protector_id: KeyProtectorId::from_disk_bytes(id),
        password: RecoveryPassword::from_key16(&key16),
    }
}

fn device_key(generated: &GeneratedKey) -> DeviceKey {
    let mut key16 = [0u8; 16];
    for (chunk, value) in key16.chunks_exact_mut(2).zip(generated.password_values) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    DeviceKey {
        volume_id: guid(&generated.volume_id),
        key_protector_id: KeyProtectorId::from_disk_bytes(disk_order(&generated.key_protector_id)),
        password: RecoveryPassword::from_key16(&key16),
    }
}

/// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` from display-order bytes, upper case.
fn guid(bytes: &[u8; 16]) -> String {
    let hex = hex::encode_upper(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Display-order GUID bytes to the on-disk (mixed-endian) order `from_disk_bytes` takes.
fn disk_order(display: &[u8; 16]) -> [u8; 16] {
    let mut disk = *display;
    disk[0..4].reverse();
    disk[4..6].reverse();
    disk[6..8].reverse();
    disk
}

fn account_password(rng: &mut ChaCha8Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_another_seed_another() {
        let a = plan(7, 50, 10, 0);
        assert_eq!(a, plan(7, 50, 10, 0));
        let b = plan(8, 50, 10, 0);
        assert_ne!(a[0].key, b[0].key);
        assert_ne!(a[0].salt, b[0].salt);
    }

    #[test]
    fn recoveries_split_between_help_desk_and_self_service() {
        let fleet = plan(3, 100, 21, 0);
        let routes: Vec<Route> = fleet.iter().filter_map(|d| d.recovery).collect();
        assert_eq!(routes.len(), 21);
        assert_eq!(routes.iter().filter(|r| **r == Route::HelpDesk).count(), 11);
        assert_eq!(
            plan(3, 5, 9, 0)
                .iter()
                .filter(|d| d.recovery.is_some())
                .count(),
            5
        );
    }

    #[test]
    fn the_tpm_sample_is_drawn_from_the_recoveries_on_both_routes() {
        let fleet = plan(3, 100, 21, 4);
        let sampled: Vec<_> = fleet.iter().filter(|d| d.on_tpm).collect();
        assert_eq!(sampled.len(), 4);
        let routes: Vec<_> = sampled.iter().filter_map(|d| d.recovery).collect();
        assert_eq!(routes.len(), 4);
        assert_eq!(routes.iter().filter(|r| **r == Route::HelpDesk).count(), 2);
        let same: Vec<_> = plan(3, 100, 21, 4)
            .into_iter()
            .filter(|d| d.on_tpm)
            .collect();
        assert_eq!(sampled, same.iter().collect::<Vec<_>>());
    }

    #[test]
    fn key_ids_print_as_the_generator_prints_them() {
        let device = &plan(1, 1, 0, 0)[0];
        let generated = KeyGenerator::new(KeySetSpec {
            count: 1,
            seed: 1,
            keys_per_device: 2,
            users: 0,
            ..KeySetSpec::default()
        })
        .next()
        .unwrap();
        let mut line = Vec::new();
        crate::keys::format_record(&generated, "X", &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.contains(&device.key.key_protector_id.to_string()),
            "{line}"
        );
        assert!(line.contains(&device.key.password.to_string()), "{line}");
        assert!(line.contains(&device.key.volume_id), "{line}");
        assert_ne!(device.key, device.next_key);
        let rotated = soak_key(1, device, 1);
        assert_eq!(rotated, soak_key(1, device, 1));
        assert_eq!(rotated.volume_id, device.key.volume_id);
        assert_ne!(
            rotated.key_protector_id,
            soak_key(1, device, 2).key_protector_id
        );
        assert_ne!(rotated.key_protector_id, device.next_key.key_protector_id);
    }
}
