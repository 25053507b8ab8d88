//! Raw TPM 2.0 command bytes for the dictionary-attack commands tss-esapi 7.7 does not wrap.
//!
//! Marshalled by hand (big-endian, TPM 2.0 Part 3) and sent on swtpm's command channel, so
//! no `unsafe` FFI into ESYS is needed for them.

pub const TPM_CC_DICTIONARY_ATTACK_LOCK_RESET: u32 = 0x0000_0139;
pub const TPM_CC_DICTIONARY_ATTACK_PARAMETERS: u32 = 0x0000_013A;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_RH_LOCKOUT: u32 = 0x4000_000A;
const TPM_RS_PW: u32 = 0x4000_0009;

/// `TPM2_Startup(TPM_SU_CLEAR)`: no sessions, no handles.
pub fn startup_clear_command() -> Vec<u8> {
    const TPM_ST_NO_SESSIONS: u16 = 0x8001;
    const TPM_CC_STARTUP: u32 = 0x0000_0144;
    const TPM_SU_CLEAR: u16 = 0x0000;
    let mut command = Vec::with_capacity(12);
    command.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    command.extend_from_slice(&12u32.to_be_bytes());
    command.extend_from_slice(&TPM_CC_STARTUP.to_be_bytes());
    command.extend_from_slice(&TPM_SU_CLEAR.to_be_bytes());
    command
}

/// A command on TPM_RH_LOCKOUT with a password session carrying `lockout_auth`.
pub fn lockout_command(command_code: u32, lockout_auth: &[u8], parameters: &[u8]) -> Vec<u8> {
    // TPMS_AUTH_COMMAND: handle, nonce (empty TPM2B), attributes, hmac (TPM2B = the password).
    let mut session = Vec::with_capacity(9 + lockout_auth.len());
    session.extend_from_slice(&TPM_RS_PW.to_be_bytes());
    session.extend_from_slice(&0u16.to_be_bytes());
    session.push(0);
    session.extend_from_slice(&(lockout_auth.len() as u16).to_be_bytes());
    session.extend_from_slice(lockout_auth);

    let mut body = Vec::new();
    body.extend_from_slice(&TPM_RH_LOCKOUT.to_be_bytes());
    body.extend_from_slice(&(session.len() as u32).to_be_bytes());
    body.extend_from_slice(&session);
    body.extend_from_slice(parameters);

    let mut command = Vec::with_capacity(10 + body.len());
    command.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    command.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    command.extend_from_slice(&command_code.to_be_bytes());
    command.extend_from_slice(&body);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_reset_with_empty_auth_is_the_spec_layout() {
        let bytes = lockout_command(TPM_CC_DICTIONARY_ATTACK_LOCK_RESET, &[], &[]);
        let expected: Vec<u8> = [
            &[0x80, 0x02][..],
            &27u32.to_be_bytes(),
            &0x139u32.to_be_bytes(),
            &0x4000_000Au32.to_be_bytes(),
            &9u32.to_be_bytes(),
            &0x4000_0009u32.to_be_bytes(),
            &[0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }
}
