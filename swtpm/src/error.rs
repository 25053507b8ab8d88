//! One error type whose variants are the outcomes a caller acts on.

use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};

/// What went wrong, named by what a caller does about it.
///
/// The TPM outcomes a BitLocker-style caller branches on get their own variant; anything else
/// keeps the raw response code and the tss-esapi error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `TPM_RC_POLICY_FAIL`: the TPM's state (e.g. a sealed PCR) no longer matches the policy.
    #[error("TPM policy check failed (TPM_RC_POLICY_FAIL, {code:#x}): the platform state no longer matches the sealing policy")]
    PolicyFailed { code: u32 },
    /// `TPM_RC_PCR_CHANGED`: a PCR was extended between the policy command and its use.
    #[error("a PCR changed during the policy session (TPM_RC_PCR_CHANGED, {code:#x})")]
    PcrChanged { code: u32 },
    /// `TPM_RC_AUTH_FAIL`: wrong authorization on a dictionary-attack-protected object;
    /// the lockout counter went up by one.
    #[error("authorization failed and was counted towards dictionary-attack lockout (TPM_RC_AUTH_FAIL, {code:#x})")]
    AuthFailed { code: u32 },
    /// `TPM_RC_LOCKOUT`: the TPM is in dictionary-attack lockout; even the right
    /// authorization is refused until a lockout reset or the recovery time passes.
    #[error("the TPM is in dictionary-attack lockout (TPM_RC_LOCKOUT, {code:#x})")]
    LockedOut { code: u32 },
    /// `TPM_RC_BAD_AUTH`: wrong authorization on an object without DA protection.
    #[error("bad authorization, not counted towards lockout (TPM_RC_BAD_AUTH, {code:#x})")]
    BadAuth { code: u32 },
    /// `TPM_RC_INTEGRITY`: the object was made by another TPM, or by this one before a clear.
    #[error("integrity check failed (TPM_RC_INTEGRITY, {code:#x}): the object was made by another TPM or before TPM2_Clear")]
    Integrity { code: u32 },
    /// The swtpm process died or refuses connections.
    #[error("the TPM is gone: {detail}")]
    TpmGone { detail: String },
    /// Any other TPM or TSS response code.
    #[error("TPM command failed with response code {code:#x}: {source}")]
    Tpm {
        code: u32,
        #[source]
        source: tss_esapi::Error,
    },
    /// A mistake caught by the tss-esapi wrapper before anything reached the TPM.
    #[error("tss-esapi refused the call: {0}")]
    Wrapper(#[source] tss_esapi::Error),
    /// swtpm could not be started.
    #[error("could not start swtpm: {detail}")]
    Spawn {
        detail: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// A caller-supplied value was out of range (e.g. a PCR index above 23).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The TSS layer of TCTI errors (bits 16..24 = 10): the transport, i.e. swtpm itself.
const TSS2_TCTI_RC_LAYER: u32 = 10 << 16;
const TSS2_RC_LAYER_MASK: u32 = 0xFF << 16;

impl Error {
    /// The raw TPM/TSS response code, where there is one.
    pub fn response_code(&self) -> Option<u32> {
        match self {
            Error::PolicyFailed { code }
            | Error::PcrChanged { code }
            | Error::AuthFailed { code }
            | Error::LockedOut { code }
            | Error::BadAuth { code }
            | Error::Integrity { code }
            | Error::Tpm { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Maps a raw response code from the TPM (or the TSS) to the variant a caller acts on.
    pub fn from_response_code(code: u32) -> Self {
        Self::from(tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code)))
    }
}

fn raw_code(rc: Tss2ResponseCode) -> u32 {
    match rc {
        Tss2ResponseCode::Success => 0,
        Tss2ResponseCode::FormatZero(c) => c.0,
        Tss2ResponseCode::FormatOne(c) => c.0,
    }
}

impl From<tss_esapi::Error> for Error {
    fn from(err: tss_esapi::Error) -> Self {
        let rc = match err {
            tss_esapi::Error::Tss2Error(rc) => rc,
            tss_esapi::Error::WrapperError(_) => return Error::Wrapper(err),
        };
        let code = raw_code(rc);
        if code & TSS2_RC_LAYER_MASK == TSS2_TCTI_RC_LAYER {
            return Error::TpmGone {
                detail: format!(
                    "TCTI error {code:#x} talking to swtpm (connection refused or closed)"
                ),
            };
        }
        match rc.kind() {
            Some(Tss2ResponseCodeKind::PolicyFail) => Error::PolicyFailed { code },
            Some(Tss2ResponseCodeKind::PcrChanged) => Error::PcrChanged { code },
            Some(Tss2ResponseCodeKind::AuthFail) => Error::AuthFailed { code },
            Some(Tss2ResponseCodeKind::Lockout) => Error::LockedOut { code },
            Some(Tss2ResponseCodeKind::BadAuth) => Error::BadAuth { code },
            Some(Tss2ResponseCodeKind::Integrity) => Error::Integrity { code },
            _ => Error::Tpm { code, source: err },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_from_tpm_notes_map_to_named_outcomes() {
        // Codes as tss-esapi reports them against swtpm (design/tpm-notes.md).
        assert!(matches!(
            Error::from_response_code(0x99D),
            Error::PolicyFailed { code: 0x99D }
        ));
        assert!(matches!(
            Error::from_response_code(0x128),
            Error::PcrChanged { .. }
        ));
        assert!(matches!(
            Error::from_response_code(0x98E),
            Error::AuthFailed { .. }
        ));
        assert!(matches!(
            Error::from_response_code(0x921),
            Error::LockedOut { .. }
        ));
        assert!(matches!(
            Error::from_response_code(0x9A2),
            Error::BadAuth { .. }
        ));
        assert!(matches!(
            Error::from_response_code(0x1DF),
            Error::Integrity { .. }
        ));
        assert!(matches!(
            Error::from_response_code(0xA000A),
            Error::TpmGone { .. }
        ));
        let other = Error::from_response_code(0x100);
        assert_eq!(other.response_code(), Some(0x100));
        assert!(matches!(other, Error::Tpm { .. }));
    }
}
