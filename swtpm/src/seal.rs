//! Sealing a secret to PCR values (PolicyPCR, optionally + PolicyAuthValue) and unsealing it.
//!
//! Generic TPM 2.0 usage, nothing BitLocker-specific: the storage root key is an ECC P-256
//! primary under the owner hierarchy, re-derived on demand (same seed + same template = same
//! key, ~1.5 ms), so nothing here goes stale across reboots. After `TPM2_Clear` (new seed) or
//! in another TPM, loading an old blob fails with [`Error::Integrity`].

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, EccPoint, EccScheme, KeyDerivationFunctionScheme, KeyedHashScheme,
    PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::error::{Error, Result};
use crate::tpm::{Tpm, MAX_PCR};

/// What the TPM must check before it releases a sealed secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealPolicy {
    /// PCR indices of the SHA-256 bank the secret is bound to.
    pub pcrs: Vec<u8>,
    /// The PCR values to bind to, one 32-byte value per index in `pcrs` (sorted by index).
    /// `None` binds to the values the TPM holds now.
    pub expected: Option<Vec<[u8; 32]>>,
    /// An authorization value (e.g. a PIN) also required at unseal (PolicyAuthValue).
    pub auth_value: Option<Vec<u8>>,
    /// Whether wrong authorization values count towards dictionary-attack lockout.
    pub dictionary_attack_protected: bool,
}

/// A sealed object as the TPM returned it: public and (TPM-encrypted) private parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// Marshalled TPM2B_PUBLIC contents.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE contents: only the TPM that made it (and its current seed) can load it.
    pub private: Vec<u8>,
}

impl SealedBlob {
    /// Serialises as `u32 LE len | public | private` for storage in a file or metadata.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.public.len() + self.private.len());
        out.extend_from_slice(&(self.public.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.public);
        out.extend_from_slice(&self.private);
        out
    }

    /// Parses what [`SealedBlob::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::InvalidArgument("sealed blob shorter than 4 bytes".into()))?;
        let public_len = u32::from_le_bytes(len_bytes) as usize;
        let public = bytes.get(4..4 + public_len).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "sealed blob says its public part has {public_len} bytes but only {} follow",
                bytes.len() - 4
            ))
        })?;
        Ok(SealedBlob {
            public: public.to_vec(),
            private: bytes[4 + public_len..].to_vec(),
        })
    }
}

impl Tpm {
    /// Seals `secret` (at most 128 bytes) so that only this TPM, with the policy's PCR
    /// values (and auth value, if any), releases it.
    pub fn seal(&mut self, secret: &[u8], policy: &SealPolicy) -> Result<SealedBlob> {
        self.seal_in_bank(secret, policy, HashingAlgorithm::Sha256)
    }

    /// As [`Tpm::seal`], but the policy's PCRs are those of `bank` (e.g. SHA-1 on a platform
    /// that measures only into SHA-1). `policy.expected` (32-byte values) is only accepted
    /// for SHA-256; for other banks use `None`: the values the TPM holds now.
    pub fn seal_in_bank(
        &mut self,
        secret: &[u8],
        policy: &SealPolicy,
        bank: HashingAlgorithm,
    ) -> Result<SealedBlob> {
        if policy.expected.is_some() && bank != HashingAlgorithm::Sha256 {
            return Err(Error::InvalidArgument(format!(
                "expected PCR values are SHA-256 values; the {bank:?} bank needs `expected: None`"
            )));
        }
        let selection = pcr_selection(&policy.pcrs, bank)?;
        let pcr_digest = match &policy.expected {
            Some(values) => {
                if values.len() != policy.pcrs.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{} expected PCR values for {} PCRs",
                        values.len(),
                        policy.pcrs.len()
                    )));
                }
                // TPM2_PolicyPCR's pcrDigest: the hash of the selected values in index order.
                let mut sorted: Vec<(u8, &[u8; 32])> =
                    policy.pcrs.iter().copied().zip(values.iter()).collect();
                sorted.sort_by_key(|(i, _)| *i);
                let mut hasher = Sha256::new();
                for (_, v) in sorted {
                    hasher.update(v);
                }
                Digest::try_from(hasher.finalize().to_vec())?
            }
            None => Digest::default(),
        };
        let with_auth = policy.auth_value.is_some();
        self.naming_death(|tpm| tpm.seal_with(secret, policy, pcr_digest, selection, with_auth))
    }

    fn seal_with(
        &mut self,
        secret: &[u8],
        policy: &SealPolicy,
        pcr_digest: Digest,
        selection: PcrSelectionList,
        with_auth: bool,
    ) -> Result<SealedBlob> {
        let ctx = self.context()?;
        let policy_digest = trial_policy(ctx, pcr_digest, selection, with_auth)?;

        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(!policy.dictionary_attack_protected)
            .with_user_with_auth(false)
            .build()?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_auth_policy(policy_digest)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()?;
        let sensitive = SensitiveData::try_from(secret.to_vec())?;
        let auth = policy
            .auth_value
            .as_ref()
            .map(|a| Auth::try_from(a.clone()))
            .transpose()?;

        let srk = storage_root_key(ctx)?;
        let created = ctx.execute_with_nullauth_session(|ctx| {
            ctx.create(srk, public, auth, Some(sensitive), None, None)
        });
        ctx.flush_context(srk.into())?;
        let created = created?;
        Ok(SealedBlob {
            public: created.out_public.marshall()?,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Loads `blob` and unseals it under a policy session that replays the policy against
    /// the TPM's current PCRs (and `auth_value`, if the blob was sealed with one).
    pub fn unseal(
        &mut self,
        blob: &SealedBlob,
        pcrs: &[u8],
        auth_value: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        self.unseal_in_bank(blob, pcrs, HashingAlgorithm::Sha256, auth_value)
    }

    /// As [`Tpm::unseal`] for a blob sealed with [`Tpm::seal_in_bank`] to `bank`.
    pub fn unseal_in_bank(
        &mut self,
        blob: &SealedBlob,
        pcrs: &[u8],
        bank: HashingAlgorithm,
        auth_value: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let selection = pcr_selection(pcrs, bank)?;
        let public = Public::unmarshall(&blob.public)?;
        let private = Private::try_from(blob.private.clone())?;
        let auth = auth_value.map(|a| Auth::try_from(a.to_vec())).transpose()?;
        self.naming_death(|tpm| {
            let ctx = tpm.context()?;
            let srk = storage_root_key(ctx)?;
            let loaded = ctx.execute_with_nullauth_session(|ctx| ctx.load(srk, private, public));
            ctx.flush_context(srk.into())?;
            let object = loaded?;

            let result = unseal_loaded(ctx, object, selection, auth);
            ctx.flush_context(object.into())?;
            result
        })
    }
}

fn unseal_loaded(
    ctx: &mut Context,
    object: KeyHandle,
    selection: PcrSelectionList,
    auth: Option<Auth>,
) -> Result<Vec<u8>> {
    let session = start_session(ctx, SessionType::Policy)?;
    let outcome = (|| -> Result<Vec<u8>> {
        let policy_session = PolicySession::try_from(session)?;
        ctx.policy_pcr(policy_session, Digest::default(), selection)?;
        if let Some(auth) = auth {
            ctx.policy_auth_value(policy_session)?;
            ctx.tr_set_auth(object.into(), auth)?;
        }
        let data = ctx.execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))?;
        Ok(data.value().to_vec())
    })();
    flush_session(ctx, session)?;
    outcome
}

fn trial_policy(
    ctx: &mut Context,
    pcr_digest: Digest,
    selection: PcrSelectionList,
    with_auth: bool,
) -> Result<Digest> {
    let session = start_session(ctx, SessionType::Trial)?;
    let outcome = (|| -> Result<Digest> {
        let policy_session = PolicySession::try_from(session)?;
        ctx.policy_pcr(policy_session, pcr_digest, selection)?;
        if with_auth {
            ctx.policy_auth_value(policy_session)?;
        }
        Ok(ctx.policy_get_digest(policy_session)?)
    })();
    flush_session(ctx, session)?;
    outcome
}

fn start_session(ctx: &mut Context, kind: SessionType) -> Result<AuthSession> {
    ctx.start_auth_session(
        None,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )?
    .ok_or_else(|| Error::InvalidArgument("the TPM returned no session handle".to_string()))
}

fn flush_session(ctx: &mut Context, session: AuthSession) -> Result<()> {
    if let AuthSession::PolicySession(policy) = session {
        let handle: tss_esapi::handles::SessionHandle = policy.into();
        ctx.flush_context(handle.into())?;
    }
    Ok(())
}

fn storage_root_key(ctx: &mut Context) -> Result<KeyHandle> {
    // noDA, as Windows' and the TCG's provisioning guidance make the SRK: its auth is empty,
    // and objects without their own DA protection must keep loading during a lockout.
    let attributes = ObjectAttributesBuilder::new()
        .with_no_da(true)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .with_ecc_scheme(EccScheme::Null)
    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
    .build()?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()?;
    let primary = ctx.execute_with_nullauth_session(|ctx| {
        ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
    })?;
    Ok(primary.key_handle)
}

fn pcr_selection(pcrs: &[u8], bank: HashingAlgorithm) -> Result<PcrSelectionList> {
    if pcrs.is_empty() {
        return Err(Error::InvalidArgument(
            "a PCR policy needs at least one PCR".to_string(),
        ));
    }
    let slots = pcrs
        .iter()
        .map(|&i| {
            if i > MAX_PCR {
                return Err(Error::InvalidArgument(format!(
                    "PCR {i} does not exist (0-{MAX_PCR})"
                )));
            }
            PcrSlot::try_from(1u32 << i).map_err(Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PcrSelectionListBuilder::new()
        .with_selection(bank, &slots)
        .build()?)
}
