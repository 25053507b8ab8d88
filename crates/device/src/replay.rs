//! Replaying a log into a real TPM (swtpm): the same digests, the same startup locality,
//! read back and compared with the software replay.

use swtpm::{HashingAlgorithm, Tpm};

use eventlog::tcg::{PcrBanks, Record, TcgLog};
use eventlog::{HashAlg, PCR_COUNT};

/// Why a replay into the TPM failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmReplayError {
    /// The TPM refused a command or could not be started.
    #[error("TPM: {0}")]
    Tpm(#[from] swtpm::Error),
    /// The TPM and the software replay disagree: a bug in one of them, never expected.
    #[error("the TPM and the software replay disagree on {bank} PCR {pcr}: software {software}, TPM {tpm}")]
    Mismatch {
        bank: HashAlg,
        pcr: u32,
        software: String,
        tpm: String,
    },
    /// The log needs something this TPM cannot do (e.g. locality 5).
    #[error("{0}")]
    Unsupported(String),
}

/// The tss-esapi algorithm of a bank.
pub fn hashing_algorithm(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// A fresh TPM started from the log's startup locality (see
/// [`Tpm::spawn_with_startup_locality`]).
pub fn spawn_for(log: &TcgLog) -> Result<Tpm, TpmReplayError> {
    if log.startup_locality > 4 {
        return Err(TpmReplayError::Unsupported(format!(
            "StartupLocality {} is not a TPM locality (0-4)",
            log.startup_locality
        )));
    }
    Ok(Tpm::spawn_with_startup_locality(log.startup_locality)?)
}

/// Extends every extended record (all its digests, one PCR_Extend per record).
pub fn extend(tpm: &mut Tpm, records: &[Record]) -> Result<(), TpmReplayError> {
    for e in records.iter().filter(|e| e.is_extended()) {
        let pcr = u8::try_from(e.pcr)
            .ok()
            .filter(|&p| (p as usize) < PCR_COUNT)
            .ok_or_else(|| TpmReplayError::Unsupported(format!("PCR {}", e.pcr)))?;
        let digests: Vec<(HashingAlgorithm, &[u8])> = e
            .digests
            .iter()
            .map(|(a, d)| (hashing_algorithm(*a), d.as_slice()))
            .collect();
        if !digests.is_empty() {
            tpm.pcr_extend(pcr, &digests)?;
        }
    }
    Ok(())
}

/// Reads PCR 0-23 of `banks`.
pub fn read(tpm: &mut Tpm, banks: &[HashAlg]) -> Result<PcrBanks, TpmReplayError> {
    let mut out = PcrBanks::default();
    let all: Vec<u8> = (0..PCR_COUNT as u8).collect();
    for &b in banks {
        let mut values = Vec::with_capacity(PCR_COUNT);
        // TPM2_PCR_Read returns at most 8 PCRs per call; pcr_read handles the chunking.
        for (_, v) in tpm.pcr_read(hashing_algorithm(b), &all)? {
            values.push(v);
        }
        out.banks.insert(b, values);
    }
    Ok(out)
}

/// Fails with [`TpmReplayError::Mismatch`] on the first PCR where the two differ.
pub fn compare(software: &PcrBanks, tpm: &PcrBanks) -> Result<(), TpmReplayError> {
    for (&bank, values) in &software.banks {
        for (i, v) in values.iter().enumerate() {
            let pcr = i as u32;
            let t = tpm.get(bank, pcr).unwrap_or_default();
            if t != v.as_slice() {
                return Err(TpmReplayError::Mismatch {
                    bank,
                    pcr,
                    software: hex::encode(v),
                    tpm: hex::encode(t),
                });
            }
        }
    }
    Ok(())
}

/// Replays the whole log into a fresh swtpm and reads every PCR of the log's banks back;
/// fails loudly if the TPM disagrees with [`TcgLog::replay`]. Returns the TPM's values.
pub fn replay_on_tpm(log: &TcgLog) -> Result<PcrBanks, TpmReplayError> {
    let mut tpm = spawn_for(log)?;
    extend(&mut tpm, &log.records)?;
    let got = read(&mut tpm, &log.banks)?;
    compare(&log.replay(), &got)?;
    Ok(got)
}
