//! `Tpm`: a connected `Context` on its own swtpm, and the machine-level acts a test needs.

use std::str::FromStr;

use tss_esapi::abstraction::pcr;
use tss_esapi::constants::{CapabilityType, PropertyTag, StartupType};
use tss_esapi::handles::{AuthHandle, ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, DigestValues, PcrSelectionListBuilder, PcrSlot,
};
use tss_esapi::tcti_ldr::{NetworkTPMConfig, TctiNameConf};
use tss_esapi::Context;

use crate::error::{Error, Result};
use crate::process::SwtpmProcess;

/// The highest PCR index of a PC Client TPM.
pub const MAX_PCR: u8 = 23;

/// Dictionary-attack settings (TPM2_DictionaryAttackParameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaParameters {
    /// Failures before lockout (`maxTries`).
    pub max_tries: u32,
    /// Seconds after which one failure is forgotten (`recoveryTime`); 0 disables DA.
    pub recovery_time_secs: u32,
    /// Seconds to wait after a failed lockout-auth use (`lockoutRecovery`).
    pub lockout_recovery_secs: u32,
}

/// A real TPM 2.0 of your own: a swtpm process and a `Context` connected to it.
///
/// Drop order matters and is fixed by field order: the `Context` is dropped (its TCTI
/// closed) before the process is killed and its state directory removed.
#[derive(Debug)]
pub struct Tpm {
    context: Option<Context>,
    lockout_auth: Vec<u8>,
    process: SwtpmProcess,
}

impl Tpm {
    /// Starts a fresh TPM (new seeds, DA defaults) and connects to it.
    pub fn spawn() -> Result<Self> {
        let process = SwtpmProcess::spawn()?;
        let context = connect(&process)?;
        Ok(Tpm {
            context: Some(context),
            lockout_auth: Vec::new(),
            process,
        })
    }

    /// Starts a fresh TPM whose `TPM2_Startup(CLEAR)` came from `locality` (0-4), as on a
    /// platform whose startup is done at locality 3 (TCG PC Client PTP; the event log then
    /// carries a StartupLocality event): PCR 0 starts at `00..0L` in every bank, not zero.
    ///
    /// The swtpm is power-cycled (`CMD_INIT`), the locality set on the control channel
    /// (`CMD_SET_LOCALITY`, as `swtpm_ioctl -l`), `TPM2_Startup(CLEAR)` sent raw, and the
    /// locality set back to 0 before a new context connects.
    pub fn spawn_with_startup_locality(locality: u8) -> Result<Self> {
        let mut tpm = Self::spawn()?;
        if locality != 0 {
            tpm.naming_death(|tpm| tpm.power_on_from_locality(locality))?;
        }
        Ok(tpm)
    }

    /// An orderly reboot whose `TPM2_Startup(CLEAR)` comes from `locality` (see
    /// [`Tpm::spawn_with_startup_locality`]); locality 0 is [`Tpm::reboot`].
    pub fn reboot_with_startup_locality(&mut self, locality: u8) -> Result<()> {
        if locality == 0 {
            return self.reboot();
        }
        self.naming_death(|tpm| {
            tpm.context()?.shutdown(StartupType::Clear)?;
            tpm.power_on_from_locality(locality)
        })
    }

    fn power_on_from_locality(&mut self, locality: u8) -> Result<()> {
        if locality > 4 {
            return Err(Error::InvalidArgument(format!(
                "locality {locality} does not exist (0-4)"
            )));
        }
        self.context = None;
        self.process.cmd_init()?;
        let control_port = self.process.server_port().saturating_add(1);
        set_locality(control_port, locality)?;
        self.run_raw(&crate::raw::startup_clear_command())?;
        set_locality(control_port, 0)?;
        self.context = Some(connect(&self.process)?);
        Ok(())
    }

    /// The tss-esapi context, for any command this crate does not wrap. Its errors do not
    /// say how swtpm ended, as the wrapped ones do: see [`SwtpmProcess::exit_status`].
    pub fn context(&mut self) -> Result<&mut Context> {
        self.ensure_alive()?;
        match self.context.as_mut() {
            Some(ctx) => Ok(ctx),
            None => Err(Error::TpmGone {
                detail: "the connection was lost during a reboot".to_string(),
            }),
        }
    }

    /// The swtpm process behind this TPM.
    pub fn process(&self) -> &SwtpmProcess {
        &self.process
    }

    /// Kills swtpm as a crash would; later calls fail with [`Error::TpmGone`].
    pub fn kill_process(&mut self) {
        self.process.kill();
    }

    /// An orderly reboot: `Shutdown(CLEAR)`, power cycle (`CMD_INIT`), `Startup(CLEAR)`.
    ///
    /// PCRs read zero afterwards (17-22 all-ff). Shutting down first matters: a reset without
    /// it after a use of a DA-protected object counts as a dictionary-attack failure.
    pub fn reboot(&mut self) -> Result<()> {
        self.naming_death(|tpm| {
            tpm.context()?.shutdown(StartupType::Clear)?;
            tpm.power_cycle_unnamed()
        })
    }

    /// Power loss without an orderly shutdown, then power-on.
    pub fn power_cycle(&mut self) -> Result<()> {
        self.naming_death(Self::power_cycle_unnamed)
    }

    fn power_cycle_unnamed(&mut self) -> Result<()> {
        // Handles held by the old context are stale after CMD_INIT: start a new context.
        self.context = None;
        self.process.cmd_init()?;
        let mut ctx = connect(&self.process)?;
        ctx.startup(StartupType::Clear)?;
        self.context = Some(ctx);
        Ok(())
    }

    /// `TPM2_Clear` with lockout authorization: new storage seed (every sealed object made
    /// before no longer loads), empty owner/lockout auth, DA parameters back to defaults.
    pub fn clear(&mut self) -> Result<()> {
        self.naming_death(|tpm| {
            let auth = Auth::try_from(tpm.lockout_auth.clone())?;
            let ctx = tpm.context()?;
            ctx.tr_set_auth(ObjectHandle::Lockout, auth)?;
            ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.clear(AuthHandle::Lockout)
            })?;
            tpm.lockout_auth.clear();
            // Clear invalidates the context's cached handles and properties.
            tpm.context = None;
            tpm.context = Some(connect(&tpm.process)?);
            Ok(())
        })
    }

    /// Sets the lockout authorization (`TPM2_HierarchyChangeAuth` on TPM_RH_LOCKOUT).
    pub fn set_lockout_auth(&mut self, new_auth: &[u8]) -> Result<()> {
        let current = Auth::try_from(self.lockout_auth.clone())?;
        let new = Auth::try_from(new_auth.to_vec())?;
        self.naming_death(|tpm| {
            let ctx = tpm.context()?;
            ctx.tr_set_auth(ObjectHandle::Lockout, current)?;
            ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.hierarchy_change_auth(AuthHandle::Lockout, new)
            })?;
            Ok(())
        })?;
        self.lockout_auth = new_auth.to_vec();
        Ok(())
    }

    /// The lockout authorization this handle knows (empty on a fresh TPM).
    pub fn lockout_auth(&self) -> &[u8] {
        &self.lockout_auth
    }

    /// Tells this handle the lockout authorization without changing the TPM (for a caller
    /// that got it from elsewhere, e.g. an escrow service). Wrong values fail at use.
    pub fn assume_lockout_auth(&mut self, auth: &[u8]) {
        self.lockout_auth = auth.to_vec();
    }

    /// `TPM2_DictionaryAttackParameters`, authorised with the lockout auth.
    pub fn set_dictionary_attack_parameters(&mut self, params: DaParameters) -> Result<()> {
        self.ensure_alive()?;
        let mut body = Vec::with_capacity(12);
        body.extend_from_slice(&params.max_tries.to_be_bytes());
        body.extend_from_slice(&params.recovery_time_secs.to_be_bytes());
        body.extend_from_slice(&params.lockout_recovery_secs.to_be_bytes());
        let command = crate::raw::lockout_command(
            crate::raw::TPM_CC_DICTIONARY_ATTACK_PARAMETERS,
            &self.lockout_auth,
            &body,
        );
        self.naming_death(|tpm| tpm.run_raw(&command))
    }

    /// `TPM2_DictionaryAttackLockReset`, authorised with the lockout auth: the failure
    /// counter goes to zero and a lockout ends.
    pub fn dictionary_attack_lock_reset(&mut self) -> Result<()> {
        self.ensure_alive()?;
        let command = crate::raw::lockout_command(
            crate::raw::TPM_CC_DICTIONARY_ATTACK_LOCK_RESET,
            &self.lockout_auth,
            &[],
        );
        self.naming_death(|tpm| tpm.run_raw(&command))
    }

    /// The current dictionary-attack failure count (`TPM_PT_LOCKOUT_COUNTER`).
    pub fn lockout_counter(&mut self) -> Result<u32> {
        self.tpm_property(PropertyTag::LockoutCounter)
    }

    /// Whether the TPM is in dictionary-attack lockout (`TPMA_PERMANENT.inLockout`).
    pub fn in_lockout(&mut self) -> Result<bool> {
        const IN_LOCKOUT: u32 = 1 << 9;
        Ok(self.tpm_property(PropertyTag::Permanent)? & IN_LOCKOUT != 0)
    }

    /// The DA parameters in force.
    pub fn dictionary_attack_parameters(&mut self) -> Result<DaParameters> {
        Ok(DaParameters {
            max_tries: self.tpm_property(PropertyTag::MaxAuthFail)?,
            recovery_time_secs: self.tpm_property(PropertyTag::LockoutInterval)?,
            lockout_recovery_secs: self.tpm_property(PropertyTag::LockoutRecovery)?,
        })
    }

    /// Reads PCRs of one bank. Returns `(index, value)` in index order.
    pub fn pcr_read(&mut self, bank: HashingAlgorithm, pcrs: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        let slots = pcr_slots(pcrs)?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(bank, &slots)
            .build()?;
        let data = self.naming_death(|tpm| Ok(pcr::read_all(tpm.context()?, selection)?))?;
        let bank_data = data
            .pcr_bank(bank)
            .ok_or_else(|| Error::InvalidArgument(format!("the TPM returned no {bank:?} bank")))?;
        let mut out = Vec::with_capacity(pcrs.len());
        for (&index, slot) in pcrs.iter().zip(slots) {
            let value = bank_data.get_digest(slot).ok_or_else(|| {
                Error::InvalidArgument(format!("the TPM did not return PCR {index}"))
            })?;
            out.push((index, value.value().to_vec()));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// Extends one PCR with one digest per bank (each digest must have its bank's size).
    pub fn pcr_extend(&mut self, index: u8, digests: &[(HashingAlgorithm, &[u8])]) -> Result<()> {
        let handle = pcr_handle(index)?;
        let mut values = DigestValues::new();
        for (alg, digest) in digests {
            values.set(*alg, Digest::try_from(digest.to_vec())?);
        }
        self.naming_death(|tpm| {
            tpm.context()?
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.pcr_extend(handle, values)
                })?;
            Ok(())
        })
    }

    fn tpm_property(&mut self, tag: PropertyTag) -> Result<u32> {
        // `Context::get_tpm_property` caches; DA state must be read fresh each time.
        let (data, _) = self.naming_death(|tpm| {
            Ok(tpm
                .context()?
                .get_capability(CapabilityType::TpmProperties, u32::from(tag), 1)?)
        })?;
        match data {
            CapabilityData::TpmProperties(list) => list
                .iter()
                .find(|p| p.property() == tag)
                .map(|p| p.value())
                .ok_or_else(|| Error::InvalidArgument(format!("the TPM did not report {tag:?}"))),
            _ => Err(Error::InvalidArgument(format!(
                "the TPM answered {tag:?} with another capability"
            ))),
        }
    }

    fn run_raw(&mut self, command: &[u8]) -> Result<()> {
        let response = self.process.raw_command(command)?;
        let rc = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::from_response_code(rc))
        }
    }

    /// Runs `op`; if it lost the TPM, the error says how swtpm ended (`swtpm exited (signal:
    /// 9 (SIGKILL))`), so a command cut off mid-way by the death reads as one refused after
    /// it. Public methods that talk to the TPM go through here; a detail that already names
    /// swtpm's state is kept.
    pub(crate) fn naming_death<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match op(self) {
            Err(Error::TpmGone { detail }) if !detail.starts_with("swtpm ") => {
                Err(Error::TpmGone {
                    detail: format!("{}: {detail}", self.process.state_after_failure()),
                })
            }
            other => other,
        }
    }

    /// Fails fast with "TPM gone" once swtpm has exited, instead of waiting on a socket.
    fn ensure_alive(&mut self) -> Result<()> {
        if self.process.is_running() {
            return Ok(());
        }
        let detail = match self.process.exit_status() {
            Some(status) => format!("swtpm exited ({status})"),
            None => "the swtpm process has exited".to_string(),
        };
        Err(Error::TpmGone { detail })
    }
}

/// `CMD_SET_LOCALITY` (5) on swtpm's control channel: big-endian u32 command, u8 locality;
/// the reply is a big-endian u32 result, 0 = success.
fn set_locality(control_port: u16, locality: u8) -> Result<()> {
    use std::io::{Read, Write};
    const CMD_SET_LOCALITY: u32 = 0x5;
    let gone = |e: std::io::Error| Error::TpmGone {
        detail: format!("control channel (set locality {locality}): {e}"),
    };
    let deadline = Some(std::time::Duration::from_secs(2));
    let mut stream = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, control_port))
        .map_err(gone)?;
    stream.set_read_timeout(deadline).map_err(gone)?;
    stream.set_write_timeout(deadline).map_err(gone)?;
    let mut request = CMD_SET_LOCALITY.to_be_bytes().to_vec();
    request.push(locality);
    stream.write_all(&request).map_err(gone)?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).map_err(gone)?;
    match u32::from_be_bytes(reply) {
        0 => Ok(()),
        rc => Err(Error::from_response_code(rc)),
    }
}

fn connect(process: &SwtpmProcess) -> Result<Context> {
    let config = NetworkTPMConfig::from_str(&process.tcti_conf())?;
    Ok(Context::new(TctiNameConf::Swtpm(config))?)
}

fn pcr_slots(pcrs: &[u8]) -> Result<Vec<PcrSlot>> {
    pcrs.iter()
        .map(|&i| {
            if i > MAX_PCR {
                return Err(Error::InvalidArgument(format!(
                    "PCR {i} does not exist (0-{MAX_PCR})"
                )));
            }
            PcrSlot::try_from(1u32 << i).map_err(Error::from)
        })
        .collect()
}

fn pcr_handle(index: u8) -> Result<PcrHandle> {
    if index > MAX_PCR {
        return Err(Error::InvalidArgument(format!(
            "PCR {index} does not exist (0-{MAX_PCR})"
        )));
    }
    // ESYS_TR_PCR0..31 are the values 0..31.
    PcrHandle::try_from(tss_esapi::tss2_esys::ESYS_TR::from(index)).map_err(Error::from)
}
