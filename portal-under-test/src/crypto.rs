//! At-rest encryption (AES-256-GCM under the data dir's key file), secret tokens and
//! password hashing (argon2id).

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CryptoError {
    // The source is printed by the error chain (`{e:#}`), so not here as well.
    #[error("key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {0} must hold exactly 32 bytes")]
    KeyFileLength(String),
    #[error("encryption failed")]
    Seal,
    #[error("decryption failed (wrong key file or damaged record)")]
    Open,
    #[error("argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing: {0}")]
    Hash(String),
}

/// Encrypts and decrypts records under one 256-bit key.
pub struct Sealer {
    cipher: Aes256Gcm,
    /// Separate key for password fingerprints (idempotent escrow without decrypting).
    mac_key: [u8; 32],
}

/// A sealed record: random 96-bit nonce + ciphertext with tag.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        let cipher = Aes256Gcm::new(key.into());
        let mut h = Sha256::new();
        h.update(b"portal-under-test fingerprint key v1");
        h.update(key);
        Sealer {
            cipher,
            mac_key: h.finalize().into(),
        }
    }

    /// Reads `path`, or creates it (mode 0600) with 32 random bytes.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| CryptoError::KeyFileLength(path.display().to_string()))?;
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(path).map_err(err)?;
                f.write_all(&key).map_err(err)?;
                f.sync_all().map_err(err)?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Encrypts `plaintext`; `aad` binds the ciphertext to its record (the key ID).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::Open);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Open)
    }

    /// Keyed fingerprint of a secret bound to its record, for equality checks only.
    pub fn fingerprint(&self, aad: &[u8], secret: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.mac_key);
        h.update((aad.len() as u64).to_be_bytes());
        h.update(aad);
        h.update(secret);
        h.finalize().into()
    }
}

/// A fresh random secret token, 32 bytes as hex with a readable prefix.
pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Tokens and credentials are stored only as their SHA-256.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// argon2id cost. Defaults are the argon2 crate's (production) defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Config {
    #[serde(default = "default_m")]
    pub m_cost_kib: u32,
    #[serde(default = "default_t")]
    pub t_cost: u32,
    #[serde(default = "default_p")]
    pub p_cost: u32,
}

fn default_m() -> u32 {
    Params::DEFAULT_M_COST
}
fn default_t() -> u32 {
    Params::DEFAULT_T_COST
}
fn default_p() -> u32 {
    Params::DEFAULT_P_COST
}

impl Default for Argon2Config {
    fn default() -> Self {
        Argon2Config {
            m_cost_kib: default_m(),
            t_cost: default_t(),
            p_cost: default_p(),
        }
    }
}

/// Hashes and verifies account passwords.
#[derive(Clone)]
pub struct PasswordHashing {
    argon: Argon2<'static>,
    /// A hash of a random password: verified against when the account does not exist, so
    /// unknown and known user names take the same time.
    dummy: String,
}

impl PasswordHashing {
    pub fn new(cfg: Argon2Config) -> Result<Self, CryptoError> {
        let params = Params::new(cfg.m_cost_kib, cfg.t_cost, cfg.p_cost, None)
            .map_err(|e| CryptoError::Params(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut this = PasswordHashing {
            argon,
            dummy: String::new(),
        };
        this.dummy = this.hash(&random_token("dummy"))?;
        Ok(this)
    }

    pub fn hash(&self, password: &str) -> Result<String, CryptoError> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| CryptoError::Hash(e.to_string()))?;
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Hash(e.to_string()))
    }

    /// `phc == None` (no such account) still costs one verification.
    pub fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let (target, real) = match phc {
            Some(p) => (p, true),
            None => (self.dummy.as_str(), false),
        };
        let ok = match PasswordHash::new(target) {
            Ok(h) => self.argon.verify_password(password.as_bytes(), &h).is_ok(),
            Err(_) => false,
        };
        ok && real
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_aad_binding() {
        let s = Sealer::from_key(&[7u8; 32]);
        let a = s.seal(b"id-1", b"secret").unwrap();
        let b = s.seal(b"id-1", b"secret").unwrap();
        assert_ne!(a.nonce, b.nonce, "nonce must be random per record");
        assert_eq!(s.open(b"id-1", &a).unwrap(), b"secret");
        assert!(
            s.open(b"id-2", &a).is_err(),
            "record moved to another key ID"
        );
        let other = Sealer::from_key(&[8u8; 32]);
        assert!(other.open(b"id-1", &a).is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let s1 = Sealer::load_or_create(&p).unwrap();
        let sealed = s1.seal(b"x", b"y").unwrap();
        let s2 = Sealer::load_or_create(&p).unwrap();
        assert_eq!(s2.open(b"x", &sealed).unwrap(), b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn passwords_verify() {
        let h = PasswordHashing::new(Argon2Config {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        })
        .unwrap();
        let phc = h.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", Some(&phc)));
        assert!(!h.verify("wrong", Some(&phc)));
        assert!(!h.verify("correct horse", None));
    }
}
