//! Plays the fleet against a portal: every device enrolls, escrows and checks in; the
//! locked-out ones recover (help desk and self-service at once), check the password against
//! their protector, and rotate it at their next check-in. `jobs` devices are in flight at a
//! time in each phase. With a duration, the devices that did not lock out keep checking in
//! (`jobs` more tasks, back to back) while the recoveries run, until the duration is over.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitlocker::RecoveryPassword;
use portal_client::{
    AccountRole, Admin, Agent, BrowserUser, EscrowKey, HelpDeskApi, HelpDeskLookup, Outcome,
    PortalError, PortalTarget, SignIn,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinSet;

use super::metrics::{failure_kind, Metrics, Op};
use super::mix::{Mix, SoakOp};
use super::plan::{plan, soak_key, DeviceKey, PlannedDevice, Route};
use super::protector::{KeyCheck, Protector};
use super::soak::{self, PortalProcess, Sampler, SoakReport};
use super::tpm::{self, TpmDevice, TpmDeviceError, MAX_TPM_SAMPLE};
use super::verdict::{DeviceReport, FleetReport, Verdict};

/// How the self-service user is played (said in the report).
pub const SELF_SERVICE_CLIENT: &str = "portal_client::BrowserUser (the HTML site, no JavaScript)";

/// The reasons given: one of each surface's documented list (API.md §5, §6).
const HELP_DESK_REASON: &str = "Other";
const SELF_SERVICE_REASON: &str = "BIOS/TPM changed";

/// What to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    pub devices: usize,
    pub recoveries: usize,
    /// How many of the locked-out devices are a real machine on its own swtpm (at most
    /// [`MAX_TPM_SAMPLE`] and `recoveries`).
    pub tpm_sample: usize,
    /// Devices in flight at once.
    pub jobs: usize,
    pub seed: u64,
    /// Keep the other devices checking in for this long after enrollment (a soak); `None`:
    /// one check-in each.
    pub duration: Option<Duration>,
    /// What the soak's workers do, by weight.
    pub mix: Mix,
    /// The portal process this harness started (its RSS and data directory are sampled);
    /// `None` for a portal at a URL.
    pub portal: Option<PortalProcess>,
}

/// The phase a finished device belongs to (for a progress display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Enroll,
    Recover,
    /// One check-in of the soak.
    CheckIn,
}

/// Called once per device and phase as it finishes.
pub type Progress = Arc<dyn Fn(Phase) + Send + Sync>;

/// Why the fleet could not be played at all (a device's own failure is its verdict).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The help desk account or its token could not be made.
    #[error("fleet setup: {0}")]
    Setup(PortalError),
    /// A worker task died (a bug, not the portal).
    #[error("a fleet worker stopped: {0}")]
    Worker(String),
}

struct Shared {
    seed: u64,
    target: PortalTarget,
    admin: Admin,
    helpdesk: HelpDeskApi,
    metrics: Metrics,
    progress: Progress,
    /// Keep the agents of devices that do not lock out (for the soak). Otherwise they are
    /// dropped as soon as they finish: each holds a connection.
    keep_agents: bool,
}

/// A device that locked out, between the phases.
struct LockedOut {
    device: PlannedDevice,
    agent: Agent,
    unlock: Unlock,
}

/// What a recovered password is checked against.
enum Unlock {
    /// The recovery-password protector alone.
    Protector(Protector),
    /// A real machine on its own swtpm (`--tpm-sample`).
    Tpm(Box<TpmDevice>),
}

enum Enrolled {
    /// Finished; the agent is kept for the soak.
    Done(DeviceReport, Option<Box<SoakDevice>>),
    LockedOut(Box<LockedOut>),
}

/// Plays the fleet; `Err` only when it could not start (setup) or a worker died.
pub async fn run(
    target: &PortalTarget,
    options: &FleetOptions,
    progress: Progress,
) -> Result<FleetReport, FleetError> {
    let started = Instant::now();
    let sample_every = soak::sample_interval(options.duration);
    let sampler = options
        .portal
        .clone()
        .map(|p| Sampler::start(p, started, sample_every));
    let tpm_sample = options.tpm_sample.min(MAX_TPM_SAMPLE);
    let devices = plan(
        options.seed,
        options.devices,
        options.recoveries,
        tpm_sample,
    );
    let admin = Admin::new(target).map_err(FleetError::Setup)?;
    let helpdesk_name = format!("fleet.s{}.helpdesk", options.seed);
    let helpdesk_password = format!("fleet-helpdesk-{}-pw", options.seed);
    admin
        .create_account(
            &helpdesk_name,
            &helpdesk_password,
            AccountRole::AdvancedHelpdesk,
        )
        .await
        .map_err(FleetError::Setup)?;
    let token = admin
        .create_api_token(&helpdesk_name)
        .await
        .map_err(FleetError::Setup)?;
    let helpdesk = HelpDeskApi::new(target, &token).map_err(FleetError::Setup)?;
    let shared = Arc::new(Shared {
        seed: options.seed,
        target: target.clone(),
        admin,
        helpdesk,
        metrics: Metrics::default(),
        progress,
        keep_agents: options.duration.is_some(),
    });

    let enroll_started = Instant::now();
    let mut reports = Vec::with_capacity(devices.len());
    let mut locked_out = Vec::new();
    let mut checking_in = Vec::new();
    for outcome in pool(&shared, devices, options.jobs, enroll).await? {
        match outcome {
            Enrolled::Done(report, soaking) => {
                if let (Some(mut soaking), Some(_)) = (soaking, options.duration) {
                    soaking.report_index = reports.len();
                    checking_in.push(tokio::sync::Mutex::new(*soaking));
                }
                reports.push(report);
            }
            Enrolled::LockedOut(device) => locked_out.push(*device),
        }
    }
    let enroll_secs = enroll_started.elapsed().as_secs_f64();
    let recover_started = Instant::now();
    let deadline = options.duration.map(|d| Instant::now() + d);
    let soak_window = options.duration.map(soak::window);
    if let (Some(deadline), Some((length, _))) = (deadline, soak_window) {
        shared.metrics.watch_soak(recover_started, deadline, length);
    }
    let (recovered, soak_failures) = tokio::join!(
        pool(&shared, locked_out, options.jobs, recover),
        soak(&shared, checking_in, deadline, options),
    );
    for (index, detail) in soak_failures? {
        if let Some(report) = reports.get_mut(index) {
            report.verdict = Verdict::Error;
            report.detail = Some(detail);
        }
    }
    reports.extend(recovered?);
    let recover_secs = recover_started.elapsed().as_secs_f64();
    reports.sort_by(|a, b| a.name.cmp(&b.name));

    let samples = match sampler {
        Some(sampler) => Some(sampler.stop().await),
        None => None,
    };
    let soak = match (options.duration, soak_window, shared.metrics.windows()) {
        (Some(duration), Some((length, windows)), Some(latency)) => {
            let soak_start_secs = recover_started.duration_since(started).as_secs_f64();
            let store_in_data_dir = options.portal.as_ref().is_some_and(|p| p.store_in_data_dir);
            let resources = samples.map(|samples| {
                soak::judge(
                    samples,
                    sample_every,
                    soak_start_secs,
                    duration,
                    length,
                    latency.soak_calls,
                    store_in_data_dir,
                )
            });
            Some(SoakReport {
                windows,
                window_secs: length.as_secs_f64(),
                soak_start_secs,
                not_sampled: resources.is_none().then(|| {
                    "not sampled: a portal at --portal-url is not this process's child".into()
                }),
                resources,
                latency,
            })
        }
        _ => None,
    };

    let tpm_unlocked = reports
        .iter()
        .filter(|r| r.tpm && r.verdict == Verdict::Rotated)
        .count();
    let mut verdicts = BTreeMap::new();
    for r in &reports {
        *verdicts.entry(r.verdict).or_insert(0) += 1;
    }
    let operations = shared.metrics.summary();
    let mut failures_by_status = BTreeMap::new();
    for op in &operations {
        for (kind, n) in &op.failures {
            *failures_by_status.entry(kind.clone()).or_insert(0) += n;
        }
    }
    Ok(FleetReport {
        seed: options.seed,
        devices: options.devices,
        recoveries: options.recoveries.min(options.devices),
        tpm_sample: reports.iter().filter(|r| r.tpm).count(),
        tpm_unlocked,
        jobs: options.jobs,
        duration_secs: options.duration.map(|d| d.as_secs_f64()),
        self_service_client: SELF_SERVICE_CLIENT,
        wall_secs: started.elapsed().as_secs_f64(),
        enroll_secs,
        recover_secs,
        verdicts,
        failures_by_status,
        operations,
        soak,
        device_reports: reports,
    })
}

/// Runs `work` on every item with `jobs` workers pulling from one queue; results come back
/// in no particular order.
async fn pool<I, T, F, Fut>(
    shared: &Arc<Shared>,
    items: Vec<I>,
    jobs: usize,
    work: F,
) -> Result<Vec<T>, FleetError>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(Arc<Shared>, I) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = T> + Send,
{
    let workers = jobs.clamp(1, items.len().max(1));
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let shared = Arc::clone(shared);
        set.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = match queue.lock() {
                    Ok(mut queue) => queue.next(),
                    Err(_) => None,
                };
                let Some(item) = next else { break };
                done.push(work(Arc::clone(&shared), item).await);
            }
            done
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        all.extend(joined.map_err(|e| FleetError::Worker(e.to_string()))?);
    }
    Ok(all)
}

/// A device of the soak: its agent, its current key, and whether the help desk was shown it
/// (then its next check-in must ask to rotate it).
struct SoakDevice {
    /// Its report's index (set once enrollment is over).
    report_index: usize,
    device: PlannedDevice,
    agent: Agent,
    key: DeviceKey,
    shown: bool,
    rotations: u32,
}

/// The soak: `jobs` tasks take the devices round robin, back to back, until `deadline`, and
/// do one operation of the mix to each. Returns the first failure of each failed device, by
/// its report index.
async fn soak(
    shared: &Arc<Shared>,
    devices: Vec<tokio::sync::Mutex<SoakDevice>>,
    deadline: Option<Instant>,
    options: &FleetOptions,
) -> Result<Vec<(usize, String)>, FleetError> {
    let Some(deadline) = deadline else {
        return Ok(Vec::new());
    };
    if devices.is_empty() {
        tokio::time::sleep_until(deadline.into()).await;
        return Ok(Vec::new());
    }
    let devices = Arc::new(devices);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::new()));
    let mut set = JoinSet::new();
    for worker in 0..options.jobs.max(1) {
        let (devices, next, failures, shared) = (
            Arc::clone(&devices),
            Arc::clone(&next),
            Arc::clone(&failures),
            Arc::clone(shared),
        );
        let (mix, seed) = (options.mix, options.seed);
        set.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(worker as u64);
            while Instant::now() < deadline {
                let k = next.fetch_add(1, Ordering::Relaxed) % devices.len();
                let Some(device) = devices.get(k) else {
                    break;
                };
                let mut device = device.lock().await;
                let op = mix.pick(&mut rng);
                if let Err(detail) = soak_step(&shared, &mut device, op, seed).await {
                    if let Ok(mut failures) = failures.lock() {
                        failures.entry(device.report_index).or_insert(detail);
                    }
                }
                (shared.progress)(Phase::CheckIn);
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| FleetError::Worker(e.to_string()))?;
    }
    let failures = failures
        .lock()
        .map(|f| f.clone().into_iter().collect())
        .unwrap_or_default();
    Ok(failures)
}

/// One operation of the soak on one device; `Err` names what went wrong.
async fn soak_step(
    shared: &Shared,
    d: &mut SoakDevice,
    op: SoakOp,
    seed: u64,
) -> Result<(), String> {
    let m = &shared.metrics;
    let id = d.key.key_protector_id.to_string();
    match op {
        SoakOp::CheckIn => {
            let c = m
                .time(Op::CheckIn, d.agent.check_in())
                .await
                .map_err(|e| format!("a soak check-in: {e}"))?;
            let asks = |k: &String| k.eq_ignore_ascii_case(&id);
            match (d.shown, c.rotate_keys.as_slice()) {
                (false, []) => Ok(()),
                (true, [k]) if asks(k) => soak_rotate(shared, d, seed).await,
                (shown, keys) => Err(format!(
                    "a soak check-in asks to rotate {keys:?}; expected {}",
                    if shown { id.as_str() } else { "nothing" }
                )),
            }
        }
        SoakOp::Escrow => {
            let escrowed = m
                .time(Op::Escrow, d.agent.escrow_key(&escrow_key(&d.key)))
                .await
                .map_err(|e| format!("a soak escrow of {id} again: {e}"))?;
            if escrowed.created || !escrowed.key_protector_id.eq_ignore_ascii_case(&id) {
                return Err(format!(
                    "escrowing {id} again answered {escrowed:?}; expected it known (created: false)"
                ));
            }
            Ok(())
        }
        SoakOp::Lookup => {
            let answer = m
                .time(
                    Op::HelpDeskLookup,
                    shared.helpdesk.lookup(&id, None, HELP_DESK_REASON),
                )
                .await
                .map_err(|e| format!("a soak help desk lookup of {id}: {e}"))?;
            match answer {
                HelpDeskLookup::Shown {
                    recovery_password, ..
                } if RecoveryPassword::parse(&recovery_password).ok().as_ref()
                    == Some(&d.key.password) =>
                {
                    d.shown = true;
                    Ok(())
                }
                other => Err(format!(
                    "a soak help desk lookup of {id}: expected its password shown, got {other:?}"
                )),
            }
        }
    }
}

/// A soak device whose key was shown rotates to its next one: escrow, confirm.
async fn soak_rotate(shared: &Shared, d: &mut SoakDevice, seed: u64) -> Result<(), String> {
    let m = &shared.metrics;
    let next = soak_key(seed, &d.device, d.rotations + 1);
    let (old, new) = (
        d.key.key_protector_id.to_string(),
        next.key_protector_id.to_string(),
    );
    m.time(Op::Escrow, d.agent.escrow_key(&escrow_key(&next)))
        .await
        .map_err(|e| format!("escrowing {new} to rotate {old}: {e}"))?;
    let rotation = m
        .time(Op::ConfirmRotation, d.agent.confirm_rotation(&old, &new))
        .await
        .map_err(|e| format!("confirming the rotation {old} -> {new}: {e}"))?;
    if !rotation.superseded.eq_ignore_ascii_case(&old)
        || !rotation.current.eq_ignore_ascii_case(&new)
    {
        return Err(format!(
            "the rotation {old} -> {new} was confirmed as {} -> {}",
            rotation.superseded, rotation.current
        ));
    }
    d.key = next;
    d.shown = false;
    d.rotations += 1;
    Ok(())
}

fn escrow_key(key: &DeviceKey) -> EscrowKey {
    EscrowKey::recovery_password(
        &key.volume_id,
        &key.key_protector_id.to_string(),
        &key.password.to_string(),
    )
}

fn report(device: &PlannedDevice, verdict: Verdict, detail: Option<String>) -> DeviceReport {
    DeviceReport {
        name: device.name.clone(),
        route: device.recovery,
        tpm: device.on_tpm,
        verdict,
        key_verified: None,
        detail,
    }
}

/// Phase 1 for one device: (for the TPM sample, BitLocker on its own swtpm first, whose key
/// it escrows), enrollment token, enroll, escrow, (the user's account and local sign-in for
/// self-service), check-in with nothing to rotate.
async fn enroll(shared: Arc<Shared>, mut device: PlannedDevice) -> Enrolled {
    let mut machine = None;
    if device.on_tpm {
        let (seed, planned) = (shared.seed, device.clone());
        match blocking(move || tpm::provision(seed, &planned)).await {
            Ok((provisioned, key)) => {
                device.key = key;
                machine = Some(Box::new(provisioned));
            }
            Err((verdict, detail)) => {
                (shared.progress)(Phase::Enroll);
                return Enrolled::Done(report(&device, verdict, Some(detail)), None);
            }
        }
    }
    let outcome = enroll_steps(&shared, &device).await;
    (shared.progress)(Phase::Enroll);
    let agent = match outcome {
        Ok(agent) => agent,
        Err(detail) => {
            return Enrolled::Done(report(&device, Verdict::Error, Some(detail)), None);
        }
    };
    if device.recovery.is_none() {
        return Enrolled::Done(
            report(&device, Verdict::Escrowed, None),
            shared.keep_agents.then(|| {
                Box::new(SoakDevice {
                    report_index: 0,
                    key: device.key.clone(),
                    device,
                    agent,
                    shown: false,
                    rotations: 0,
                })
            }),
        );
    }
    let unlock = match machine {
        Some(machine) => Unlock::Tpm(machine),
        None => {
            // The protector a lockout needs: one stretch, off the async workers.
            let (password, salt, nonce, vmk) =
                (device.key.password, device.salt, device.nonce, device.vmk);
            let made = blocking(move || Protector::new(&password, salt, nonce, vmk)).await;
            match made {
                Ok(protector) => Unlock::Protector(protector),
                Err((verdict, detail)) => {
                    let detail = format!("making its protector: {detail}");
                    return Enrolled::Done(report(&device, verdict, Some(detail)), None);
                }
            }
        }
    };
    Enrolled::LockedOut(Box::new(LockedOut {
        device,
        agent,
        unlock,
    }))
}

/// Runs blocking device work (TPM commands, the stretch) off the async workers; its error
/// becomes the device's verdict (a wrong key, or an error).
async fn blocking<T, E, F>(work: F) -> Result<T, Stop>
where
    T: Send + 'static,
    E: Into<DeviceFailure> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into().0),
        Err(e) => Err((Verdict::Error, format!("a device task stopped: {e}"))),
    }
}

/// A device-side failure as a verdict and its reason.
struct DeviceFailure(Stop);

impl From<TpmDeviceError> for DeviceFailure {
    fn from(e: TpmDeviceError) -> Self {
        let verdict = match e {
            TpmDeviceError::WrongKey(_) => Verdict::WrongKey,
            _ => Verdict::Error,
        };
        DeviceFailure((verdict, format!("on its swtpm: {e}")))
    }
}

impl From<bitlocker::keywrap::KeyWrapError> for DeviceFailure {
    fn from(e: bitlocker::keywrap::KeyWrapError) -> Self {
        DeviceFailure((Verdict::Error, e.to_string()))
    }
}

async fn enroll_steps(shared: &Shared, device: &PlannedDevice) -> Result<Agent, String> {
    let m = &shared.metrics;
    let text = |e: PortalError| e.to_string();
    let token = m
        .time(Op::EnrollmentToken, shared.admin.create_enrollment_token())
        .await
        .map_err(text)?;
    let agent = m
        .time(
            Op::Enroll,
            Agent::enroll(&shared.target, &token, &device.name),
        )
        .await
        .map_err(text)?;
    let escrowed = m
        .time(Op::Escrow, agent.escrow_key(&escrow_key(&device.key)))
        .await
        .map_err(text)?;
    let id = device.key.key_protector_id.to_string();
    if !escrowed.key_protector_id.eq_ignore_ascii_case(&id) {
        return Err(format!(
            "escrow answered key ID {}, expected {id}",
            escrowed.key_protector_id
        ));
    }
    if device.recovery == Some(Route::SelfService) {
        m.time(
            Op::CreateAccount,
            shared
                .admin
                .create_account(&device.user, &device.user_password, AccountRole::User),
        )
        .await
        .map_err(text)?;
        m.time(
            Op::ReportSignIn,
            agent.report_sign_in(&device.user, SignIn::Local),
        )
        .await
        .map_err(text)?;
    }
    let check_in = m.time(Op::CheckIn, agent.check_in()).await.map_err(text)?;
    if !check_in.rotate_keys.is_empty() {
        return Err(format!(
            "the first check-in asks to rotate keys nobody was shown: {:?}",
            check_in.rotate_keys
        ));
    }
    Ok(agent)
}

/// A recovery that went wrong: its verdict and why.
type Stop = (Verdict, String);

/// A portal failure during recovery: 4xx refused (404: the escrowed key is gone), 5xx and
/// the rest an error.
fn recovery_failure(e: &PortalError) -> Stop {
    let verdict = match e.status() {
        Some(s) if (400..500).contains(&s) => Verdict::Refused,
        _ => Verdict::Error,
    };
    let lost = if e.status() == Some(404) {
        " (the escrowed key is not found: a lost escrow)"
    } else {
        ""
    };
    (verdict, format!("{e}{lost}"))
}

/// Phase 2 for one locked-out device: recover, verify, rotate.
async fn recover(shared: Arc<Shared>, locked: LockedOut) -> DeviceReport {
    let LockedOut {
        device,
        agent,
        unlock,
    } = locked;
    let mut out = report(&device, Verdict::Recovered, None);
    let result = match unlock {
        Unlock::Protector(protector) => {
            recover_protector(&shared, &device, &agent, protector, &mut out).await
        }
        Unlock::Tpm(machine) => recover_on_tpm(&shared, &device, &agent, machine, &mut out).await,
    };
    match result {
        Ok(()) => out.verdict = Verdict::Rotated,
        Err((verdict, detail)) => {
            if verdict == Verdict::WrongKey {
                out.key_verified = Some(false);
            }
            out.verdict = verdict;
            out.detail = Some(detail);
        }
    }
    (shared.progress)(Phase::Recover);
    out
}

/// The recovery password as the device's user gets it, by its route.
async fn recovered_password(shared: &Shared, device: &PlannedDevice) -> Result<String, Stop> {
    match device.recovery {
        Some(Route::SelfService) => self_service(shared, device).await,
        _ => help_desk(shared, device).await,
    }
}

/// A simulated device: the password checked against its protector, then the rotation.
async fn recover_protector(
    shared: &Shared,
    device: &PlannedDevice,
    agent: &Agent,
    protector: Protector,
    out: &mut DeviceReport,
) -> Result<(), Stop> {
    let password = recovered_password(shared, device).await?;
    verify(shared, protector, password).await?;
    out.key_verified = Some(true);
    let old = device.key.key_protector_id.to_string();
    rotation_asked(shared, agent, &old).await?;
    finish_rotation(shared, agent, &old, &device.next_key).await
}

/// A device on its own swtpm: the change and the TPM's refusal, the recovery through the
/// portal, the password typed on its recovery screen, the rotation (the machine makes the
/// new password), and a boot that unlocks by TPM again.
async fn recover_on_tpm(
    shared: &Shared,
    device: &PlannedDevice,
    agent: &Agent,
    mut machine: Box<TpmDevice>,
    out: &mut DeviceReport,
) -> Result<(), Stop> {
    let key = device.key.clone();
    machine = blocking(move || machine.lock_out(&key).map(|()| machine)).await?;
    let password = recovered_password(shared, device).await?;
    let key = device.key.clone();
    let start = Instant::now();
    let typed = blocking(move || {
        machine
            .type_recovery_password(&password, &key)
            .map(|()| machine)
    })
    .await;
    let failure = match &typed {
        Ok(_) => None,
        Err((Verdict::WrongKey, _)) => Some("wrong key".to_string()),
        Err(_) => Some("verify failed".to_string()),
    };
    shared.metrics.record(Op::Verify, start, failure);
    machine = typed?;
    out.key_verified = Some(true);
    let old = device.key.key_protector_id.to_string();
    rotation_asked(shared, agent, &old).await?;
    let key = device.key.clone();
    let (mut machine, next) =
        blocking(move || machine.rotate(&key).map(|next| (machine, next))).await?;
    finish_rotation(shared, agent, &old, &next).await?;
    blocking(move || machine.reboot()).await
}

async fn help_desk(shared: &Shared, device: &PlannedDevice) -> Result<String, Stop> {
    let id = device.key.key_protector_id.to_string();
    let answer = shared
        .metrics
        .time(
            Op::HelpDeskLookup,
            shared.helpdesk.lookup(&id, None, HELP_DESK_REASON),
        )
        .await
        .map_err(|e| recovery_failure(&e))?;
    match answer {
        HelpDeskLookup::Shown {
            recovery_password,
            key_id,
            ..
        } if key_id.eq_ignore_ascii_case(&id) => Ok(recovery_password),
        other => Err((
            Verdict::Error,
            format!(
                "help desk lookup of all 32 digits of {id}: expected that key shown, got {other:?}"
            ),
        )),
    }
}

async fn self_service(shared: &Shared, device: &PlannedDevice) -> Result<String, Stop> {
    let m = &shared.metrics;
    let mut user =
        BrowserUser::new(&shared.target, &device.user).map_err(|e| recovery_failure(&e))?;
    m.time(
        Op::SelfServiceSignIn,
        user.sign_in_and_accept(&device.user, &device.user_password),
    )
    .await
    .map_err(|e| recovery_failure(&e))?;
    let id = device.key.key_protector_id;
    // As a user types it: the first 8 digits; all 32 when several keys match.
    for typed in [id.first8(), id.to_string()] {
        let start = Instant::now();
        let answer = user.request_key(&typed, SELF_SERVICE_REASON).await;
        let failure = match &answer {
            Err(e) => Some(failure_kind(e)),
            Ok(a) if a.status >= 400 => Some(a.status.to_string()),
            Ok(_) => None,
        };
        m.record(Op::SelfServiceKey, start, failure);
        let answer = answer.map_err(|e| recovery_failure(&e))?;
        let refused = |what: &str| {
            let verdict = if answer.status >= 500 {
                Verdict::Error
            } else {
                Verdict::Refused
            };
            Err((
                verdict,
                format!(
                    "self-service key request {typed}: {what} (status {})",
                    answer.status
                ),
            ))
        };
        match &answer.outcome {
            Outcome::KeyShown(key) => return Ok(key.clone()),
            Outcome::SeveralMatches(_) => continue,
            Outcome::NotFound(e) => {
                return refused(&format!("not found: a lost escrow ({e})"));
            }
            other => return refused(&format!("{other:?}")),
        }
    }
    Err((
        Verdict::Error,
        format!("self-service: several matches even for all 32 digits of {id}"),
    ))
}

/// The recovered password against the device's protector, off the async workers.
async fn verify(shared: &Shared, protector: Protector, password: String) -> Result<(), Stop> {
    let start = Instant::now();
    let check = tokio::task::spawn_blocking(move || protector.check(&password)).await;
    let outcome = match check {
        Ok(KeyCheck::Unlocks) => Ok(()),
        Ok(KeyCheck::WrongKey(why)) => Err((
            Verdict::WrongKey,
            format!("the recovered password does not unlock the device: {why}"),
        )),
        Err(e) => Err((Verdict::Error, format!("checking the key: {e}"))),
    };
    let failure = match &outcome {
        Ok(()) => None,
        Err((Verdict::WrongKey, _)) => Some("wrong key".to_string()),
        Err(_) => Some("verify failed".to_string()),
    };
    shared.metrics.record(Op::Verify, start, failure);
    outcome
}

/// The check-in after the recovery must ask the device to rotate the shown key `old`.
async fn rotation_asked(shared: &Shared, agent: &Agent, old: &str) -> Result<(), Stop> {
    let check_in = shared
        .metrics
        .time(Op::CheckIn, agent.check_in())
        .await
        .map_err(|e| recovery_failure(&e))?;
    if !check_in
        .rotate_keys
        .iter()
        .any(|k| k.eq_ignore_ascii_case(old))
    {
        return Err((
            Verdict::Recovered,
            format!(
                "the check-in after the recovery does not ask to rotate {old}: {:?}",
                check_in.rotate_keys
            ),
        ));
    }
    Ok(())
}

/// The device escrows its new key, confirms the rotation, and the check-in after that asks
/// for nothing.
async fn finish_rotation(
    shared: &Shared,
    agent: &Agent,
    old: &str,
    next: &DeviceKey,
) -> Result<(), Stop> {
    let m = &shared.metrics;
    let new = next.key_protector_id.to_string();
    let unfinished = |what: String| (Verdict::Recovered, what);
    m.time(Op::Escrow, agent.escrow_key(&escrow_key(next)))
        .await
        .map_err(|e| recovery_failure(&e))?;
    let rotation = m
        .time(Op::ConfirmRotation, agent.confirm_rotation(old, &new))
        .await
        .map_err(|e| recovery_failure(&e))?;
    if !rotation.superseded.eq_ignore_ascii_case(old)
        || !rotation.current.eq_ignore_ascii_case(&new)
    {
        return Err(unfinished(format!(
            "the rotation {old} -> {new} was confirmed as {} -> {}",
            rotation.superseded, rotation.current
        )));
    }
    let after = m
        .time(Op::CheckIn, agent.check_in())
        .await
        .map_err(|e| recovery_failure(&e))?;
    if !after.rotate_keys.is_empty() {
        return Err(unfinished(format!(
            "after the rotation the check-in still asks to rotate {:?}",
            after.rotate_keys
        )));
    }
    Ok(())
}
