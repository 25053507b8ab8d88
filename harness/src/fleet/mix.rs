//! The soak's operation mix (`--mix checkin=70,escrow=20,lookup=10`): what each step of a
//! soak worker does to the next device, drawn by weight.

use rand::Rng;
use serde::Serialize;

/// One step of the soak on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoakOp {
    /// The agent checks in: nothing to rotate, unless its key was shown (then it rotates).
    CheckIn,
    /// The agent sends its current key again (as after a reboot): 200, `created: false`.
    Escrow,
    /// The help desk looks the device's current key up: shown, equal to the device's key;
    /// the device's next check-in must ask to rotate it.
    Lookup,
}

/// Weights of the soak's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub checkin: u32,
    pub escrow: u32,
    pub lookup: u32,
}

impl Default for Mix {
    /// Check-ins only.
    fn default() -> Self {
        Mix {
            checkin: 100,
            escrow: 0,
            lookup: 0,
        }
    }
}

impl Mix {
    /// `checkin=70,escrow=20,lookup=10`: names `checkin`, `escrow`, `lookup` (each at most
    /// once, a missing one weighs 0), whole-number weights, at least one above 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            checkin: 0,
            escrow: 0,
            lookup: 0,
        };
        let mut seen = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected NAME=WEIGHT, e.g. checkin=70"))?;
            let name = name.trim();
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight is not a whole number"))?;
            if seen.contains(&name) {
                return Err(format!("{name:?} given twice"));
            }
            seen.push(name);
            let slot = match name {
                "checkin" => &mut mix.checkin,
                "escrow" => &mut mix.escrow,
                "lookup" => &mut mix.lookup,
                _ => {
                    return Err(format!(
                        "{name:?}: not an operation (checkin, escrow, lookup)"
                    ))
                }
            };
            *slot = weight;
        }
        if mix.total() == 0 {
            return Err("every weight is 0".into());
        }
        Ok(mix)
    }

    fn total(&self) -> u64 {
        u64::from(self.checkin) + u64::from(self.escrow) + u64::from(self.lookup)
    }

    /// One operation, drawn by weight.
    pub fn pick(&self, rng: &mut impl Rng) -> SoakOp {
        let n = rng.random_range(0..self.total().max(1));
        if n < u64::from(self.checkin) {
            SoakOp::CheckIn
        } else if n < u64::from(self.checkin) + u64::from(self.escrow) {
            SoakOp::Escrow
        } else {
            SoakOp::Lookup
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_mix_parses_and_draws_by_weight() {
        let mix = Mix::parse("checkin=70, escrow=20,lookup=10").unwrap();
        assert_eq!((mix.checkin, mix.escrow, mix.lookup), (70, 20, 10));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<SoakOp> = (0..10_000).map(|_| mix.pick(&mut rng)).collect();
        let lookups = draws.iter().filter(|o| **o == SoakOp::Lookup).count();
        assert!((800..1200).contains(&lookups), "{lookups}");
        let only = Mix::parse("escrow=1").unwrap();
        assert_eq!(only.pick(&mut rng), SoakOp::Escrow);
        for bad in [
            "checkin",
            "checkin=x",
            "reboot=5",
            "checkin=0",
            "checkin=1,checkin=2",
            "",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }
}
