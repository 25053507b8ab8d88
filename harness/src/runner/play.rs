//! One scenario, end to end: a device on its own TPM, the portal over HTTP, the user.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use crate::scenario::serde_name;
use crate::scenario::{
    self, AfterRecovery, Answer as Expected, ChangeKind, IdleExpiry, KeyIdDigits, Language,
    PinAction, ProtectorKind, RecoveryVia, Scenario, TpmError,
};
use bitlocker::{KeyProtectorId, RecoveryPassword};
use device::machine::{
    BitLockerSetup, BootOutcome, EscrowedKey, Machine, RecoveryScreen, TpmProtection, WINDOWS_DA,
};
use device::Device;
use portal_client::chrome::get_key_label;
use portal_client::{
    AccountRole, Admin, Agent, Answer, AuditQuery, AuditRow, BrowserUser, ChromeOptions,
    ChromeUser, EscrowKey, HelpDeskOperator, Outcome, PortalTarget, Screenshot, SettingsPatch,
    SignIn,
};

use super::steps::{because, ensure, step, Failure, StepResult, Steps};
use super::user::User;
use super::volume_check::{self, JudgedVolume, VolumeJudges};

/// The story's audit rows as `(source, outcome)`, each with whether it is one of the
/// harness's own probe rows.
type StoryAuditRows = StepResult<(Vec<(String, String)>, Vec<bool>)>;

/// What a scenario's lockout looked like, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LockoutFacts {
    /// The TPM's refusal (`policy_failed`, `locked_out`, ...), if the device went to recovery.
    pub tpm_error: Option<String>,
    /// The TPM response code.
    pub tpm_response_code: Option<u32>,
    /// The profile PCRs that differ from the sealed state.
    pub changed_pcrs: Vec<u32>,
    /// A readable explanation: old/new values and the events behind each difference.
    pub explanation: Option<String>,
    /// The key ID the recovery screen showed.
    pub recovery_key_id: Option<String>,
    /// A real-firmware device's boots (`device.firmware`), for the report: in JSON each
    /// boot's change, time, PCRs moved against boot 1 and the model's verdict.
    #[serde(
        serialize_with = "super::real_firmware::serialize_boots",
        skip_serializing_if = "Option::is_none"
    )]
    pub real_boots: Option<device::real_firmware::SharedBoots>,
}

/// A user's portal identity in this run: names carry a per-run tag so that scenarios
/// sharing one portal never see each other's accounts or devices.
#[derive(Clone)]
struct Names {
    tag: String,
}

impl Names {
    fn new() -> Names {
        Names {
            tag: format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff),
        }
    }

    fn user(&self, name: &str) -> String {
        format!("{name}.{}", self.tag)
    }
    fn device(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }
}

/// Everything one run of one scenario needs.
pub struct Play<'a> {
    pub scenario: &'a Scenario,
    pub target: &'a PortalTarget,
    pub steps: Steps,
    pub facts: LockoutFacts,
    /// Play the self-service user in Chromium (`harness run --browser`).
    pub browser: Option<ChromeOptions>,
    /// The browser's screenshots, in order.
    pub screenshots: Vec<Screenshot>,
    /// Outside tools that judge the volume image with the portal's key.
    pub volume_judges: VolumeJudges,
    /// Requests the harness makes only to compare or confirm an answer (an absent key ID or
    /// computer, the rotated-away or kept key): their audit rows are the harness's, not the
    /// story's.
    probes: Vec<Probe>,
}

/// What a harness-only request asked for (how its audit row is recognised).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// A key ID, as typed.
    KeyId(String),
    /// A computer name (Manage TPM).
    Computer(String),
}

/// A device after phase 1: provisioned, booted once, named for this run.
struct Provisioned {
    names: Names,
    /// The scenario's description of it.
    spec: scenario::Device,
    device_name: String,
    pin: Option<String>,
    machine: Machine,
    /// The recovery passwords provisioning made (the agent escrows them).
    escrow: Vec<EscrowedKey>,
}

/// The portal's side of one device after phase 2: its enrolled agent and each user's
/// password (by lower-case scenario name).
struct Enrolled {
    agent: Agent,
    passwords: HashMap<String, String>,
}

const PASSWORD_LEN: usize = 20;

impl<'a> Play<'a> {
    pub fn new(scenario: &'a Scenario, target: &'a PortalTarget) -> Self {
        Play {
            scenario,
            target,
            steps: Steps::default(),
            facts: LockoutFacts::default(),
            browser: None,
            screenshots: Vec::new(),
            volume_judges: VolumeJudges::default(),
            probes: Vec::new(),
        }
    }

    /// Runs every phase; the first failure ends the run. Each device of the story is
    /// played on its own TPM; the changes and the recovery act on the one they name.
    pub async fn run(&mut self) -> Result<(), Failure> {
        let names = Names::new();
        let mut devices = Vec::new();
        for (i, spec) in self.scenario.all_devices().into_iter().enumerate() {
            devices.push(self.provision(spec, i, &names)?);
        }
        let passwords = self.create_accounts(&names).await?;
        let mut portal = Vec::new();
        for (i, device) in devices.iter().enumerate() {
            portal.push(self.enroll_and_escrow(device, i, &passwords).await?);
        }
        let mut recovered = false;
        for i in 0..self.scenario.steps().len() {
            let screen = self.change_and_boot(i, &mut devices)?;
            let (Some((at, screen)), Some(recovery)) = (screen, self.scenario.recovery_after(i))
            else {
                continue;
            };
            let key_id = screen.key_id;
            let (device, enrolled) = (&mut devices[at], &portal[at]);
            if let Some(password) = self.recover(recovery, key_id, device, enrolled).await? {
                self.unlock(device, key_id, &password)?;
                self.after_recovery(device, enrolled, key_id, &password)
                    .await?;
            }
            recovered = true;
        }
        if recovered {
            self.untouched_devices(&mut devices, &portal).await?;
        }
        self.portal_only_checks(&devices, &portal).await
    }

    /// A step of the `i`-th device: named plainly in a story of one device, with the
    /// device's number in a story of several.
    fn of_device(&self, name: &str, i: usize) -> String {
        if self.scenario.all_devices().len() > 1 {
            format!("{name} (device {})", i + 1)
        } else {
            name.to_string()
        }
    }

    /// Phase 1, a device: its own swtpm, BitLocker provisioned, a first healthy boot.
    fn provision(
        &mut self,
        spec: &scenario::Device,
        i: usize,
        names: &Names,
    ) -> Result<Provisioned, Failure> {
        let setup = bitlocker_setup(spec)?;
        let device = scenario_device(spec)?;
        let pin = spec.pin.clone();
        let step = self.of_device("provision BitLocker on a fresh TPM", i);
        let real_boots = &mut self.facts.real_boots;
        let (mut machine, escrow) = self.steps.run(&step, || {
            super::real_firmware::provision(spec, device, &setup, real_boots)
                .map_err(because("a provisioned device"))
        })?;
        self.steps.note(format!(
            "{}: profile {}, {} recovery password(s), TPM protector {}",
            spec.name,
            setup.profile,
            escrow.len(),
            machine.tpm_protector_id()
        ));
        let step = self.of_device("first boot opens without help", i);
        self.steps
            .run(&step, || expect_unlocked(machine.boot(pin.as_deref())))?;
        Ok(Provisioned {
            device_name: names.device(&spec.name),
            names: names.clone(),
            spec: spec.clone(),
            pin,
            machine,
            escrow,
        })
    }

    /// Phase 2a, the portal's accounts: each user's password (by lower-case scenario name).
    async fn create_accounts(&mut self, names: &Names) -> Result<HashMap<String, String>, Failure> {
        let s = self.scenario;
        let admin =
            Admin::new(self.target).map_err(|e| failure("connect as admin", "a client", e))?;
        let mut passwords = HashMap::new();
        for user in &s.users {
            let password = random_password(&mut rand::rng());
            let role: AccountRole = user.role.into();
            let name = names.user(&user.name);
            self.steps
                .run_async(&format!("admin creates account {}", user.name), async {
                    admin
                        .create_account(&name, &password, role)
                        .await
                        .map_err(because("201 Created"))
                })
                .await?;
            passwords.insert(user.name.to_lowercase(), password);
        }
        Ok(passwords)
    }

    /// Phase 2b, the portal and one device: an enrollment token, the agent's escrow and
    /// the sign-ins on it.
    async fn enroll_and_escrow(
        &mut self,
        d: &Provisioned,
        i: usize,
        passwords: &HashMap<String, String>,
    ) -> Result<Enrolled, Failure> {
        let s = self.scenario;
        let admin =
            Admin::new(self.target).map_err(|e| failure("connect as admin", "a client", e))?;
        let token = self
            .steps
            .run_async(
                &self.of_device("admin issues an enrollment token", i),
                async {
                    admin
                        .create_enrollment_token()
                        .await
                        .map_err(because("a token"))
                },
            )
            .await?;
        let agent = self
            .steps
            .run_async(&self.of_device("the device's agent enrolls", i), async {
                Agent::enroll(self.target, &token, &d.device_name)
                    .await
                    .map_err(because("a device credential"))
            })
            .await?;
        for key in &d.escrow {
            self.steps
                .run_async(&format!("agent escrows {}", key.key_protector_id), async {
                    let escrowed = agent
                        .escrow_key(&escrow_key(key))
                        .await
                        .map_err(because("201 Created"))?;
                    ensure(
                        escrowed
                            .key_protector_id
                            .eq_ignore_ascii_case(&key.key_protector_id.to_string()),
                        key.key_protector_id.to_string(),
                        escrowed.key_protector_id,
                    )
                })
                .await?;
        }
        if d.spec.escrow_tpm_lockout {
            let auth = d.machine.lockout_auth().to_vec();
            let step = self.of_device("agent escrows the TPM lockout authorization", i);
            self.steps
                .run_async(&step, async {
                    agent
                        .escrow_tpm_lockout(&auth)
                        .await
                        .map_err(because("204"))
                })
                .await?;
        }
        for user in &s.users {
            for kind in s.sign_ins(user, &d.spec) {
                let name = d.names.user(&user.name);
                let step = format!(
                    "agent reports a {} sign-in by {}",
                    serde_name(&kind),
                    user.name
                )
                .to_lowercase();
                let kind: SignIn = kind.into();
                self.steps
                    .run_async(&step, async {
                        agent
                            .report_sign_in(&name, kind)
                            .await
                            .map_err(because("204"))
                    })
                    .await?;
            }
        }
        Ok(Enrolled {
            agent,
            passwords: passwords.clone(),
        })
    }

    /// Phase 4, the user recovers through the portal, as `recovery.via` says: the recovery
    /// password the portal gave, if the story has one to type.
    async fn recover(
        &mut self,
        recovery: &scenario::Recovery,
        key_id: KeyProtectorId,
        d: &mut Provisioned,
        p: &Enrolled,
    ) -> Result<Option<String>, Failure> {
        let requester = d.names.user(&recovery.requester);
        let password = p
            .passwords
            .get(&recovery.requester.to_lowercase())
            .cloned()
            .ok_or_else(|| {
                plain(
                    "find the requester",
                    "a user in the scenario",
                    &recovery.requester,
                )
            })?;
        let typed_id = match recovery.digits() {
            KeyIdDigits::Eight => key_id.first8(),
            KeyIdDigits::ThirtyTwo => key_id.to_string(),
        };
        match recovery.via {
            RecoveryVia::SelfService => {
                self.recover_self_service(recovery, &requester, &password, &key_id, &typed_id)
                    .await
            }
            RecoveryVia::HelpDesk => {
                self.recover_help_desk(recovery, d, &requester, &password, &key_id, &typed_id)
                    .await
            }
            RecoveryVia::HelpDeskTpmReset => {
                self.recover_tpm_reset(recovery, d, p, &requester, &password)
                    .await?;
                Ok(None)
            }
        }
    }

    /// `via: self_service`: the user at `/SelfService`, in whichever client plays it.
    async fn recover_self_service(
        &mut self,
        recovery: &scenario::Recovery,
        username: &str,
        password: &str,
        key_id: &KeyProtectorId,
        typed_id: &str,
    ) -> Result<Option<String>, Failure> {
        let mut user = User::open(
            self.target,
            username,
            self.browser.as_ref(),
            self.scenario
                .browser_language(recovery)
                .map(|l| l.accept_language()),
        )
        .await
        .map_err(|e| {
            let what = if self.browser.is_some() {
                "Chromium (chromedriver)"
            } else {
                "a client"
            };
            failure("open the portal", what, e)
        })?;
        let result = self
            .self_service(recovery, &mut user, username, password, key_id, typed_id)
            .await;
        if result.is_err() {
            user.screenshot("failure").await;
        }
        self.screenshots.extend(user.finish().await);
        result
    }

    /// `via: help_desk`: the operator looks the key up for the user.
    async fn recover_help_desk(
        &mut self,
        recovery: &scenario::Recovery,
        d: &Provisioned,
        operator_name: &str,
        operator_password: &str,
        key_id: &KeyProtectorId,
        typed_id: &str,
    ) -> Result<Option<String>, Failure> {
        let mut operator = self
            .help_desk_operator(operator_name, operator_password, recovery)
            .await?;
        let end_user = recovery.end_user.as_deref().map(|u| d.names.user(u));
        let reason = recovery.reason.as_str();
        let answer = self
            .steps
            .run_async(
                &format!("operator looks up {} digits of the key ID", typed_id.len()),
                async {
                    operator
                        .lookup_key(typed_id, end_user.as_deref(), reason)
                        .await
                        .map_err(because("an answer page"))
                },
            )
            .await?;
        self.help_desk_answer(
            recovery.answer,
            answer,
            &mut operator,
            end_user.as_deref(),
            key_id,
            typed_id.len(),
            reason,
        )
        .await
    }

    /// `via: help_desk_tpm_reset`: the operator reads the TPM lockout authorization (Manage
    /// TPM), the device resets its lockout with it and the right PIN unlocks; then the
    /// lockout authorization's own rotation cycle.
    async fn recover_tpm_reset(
        &mut self,
        recovery: &scenario::Recovery,
        d: &mut Provisioned,
        p: &Enrolled,
        operator_name: &str,
        operator_password: &str,
    ) -> Result<(), Failure> {
        let mut operator = self
            .help_desk_operator(operator_name, operator_password, recovery)
            .await?;
        let end_user = recovery.end_user.as_deref().map(|u| d.names.user(u));
        let reason = recovery.reason.as_str();
        let answer = self
            .steps
            .run_async(
                "operator reads the TPM lockout authorization (Manage TPM)",
                async {
                    operator
                        .manage_tpm(&d.device_name, end_user.as_deref(), reason)
                        .await
                        .map_err(because("the Manage TPM answer"))
                },
            )
            .await?;
        let auth_hex = match recovery.answer {
            Expected::Refused => {
                return self
                    .tpm_refusal_like_absent(
                        &mut operator,
                        &answer,
                        &d.device_name,
                        end_user.as_deref(),
                        reason,
                    )
                    .await;
            }
            expected => self.steps.run(step::MANAGE_TPM, || match &answer.outcome {
                Outcome::LockoutAuth(hex) if expected == Expected::LockoutAuthShown => {
                    Ok(hex.clone())
                }
                _ => Err((serde_name(&expected), answer_words(&answer))),
            })?,
        };
        let auth = hex::decode(auth_hex.trim())
            .map_err(|e| plain("decode the lockout authorization", "hex", &e.to_string()))?;
        let (machine, pin) = (&mut d.machine, d.pin.as_deref());
        self.steps
            .run("the device resets the TPM lockout with it", || {
                machine
                    .reset_tpm_lockout(&auth)
                    .map_err(because("a lockout reset"))
            })?;
        self.steps
            .run("the right PIN unlocks without a recovery key", || {
                expect_unlocked(machine.boot(pin))
            })?;
        self.lockout_auth_cycle(machine, &p.agent).await
    }

    /// After a TPM reset: the portal asks the agent to rotate the shown lockout
    /// authorization at its check-in; the agent rotates it (or keeps it and is asked again).
    async fn lockout_auth_cycle(
        &mut self,
        machine: &mut Machine,
        agent: &Agent,
    ) -> Result<(), Failure> {
        self.steps
            .run_async(
                "agent check-in asks to rotate the TPM lockout authorization",
                async {
                    let c = agent.check_in().await.map_err(because("a check-in"))?;
                    ensure(
                        c.rotate_tpm_lockout,
                        "rotate_tpm_lockout: true",
                        format!("{c:?}"),
                    )
                },
            )
            .await?;
        match after_recovery(self.scenario) {
            AfterRecovery::Rotate => {
                let new_auth = machine
                    .rotate_lockout_auth(&mut rand::rng())
                    .map_err(|e| failure("rotate the lockout authorization", "a new value", e))?;
                self.steps
                    .run_async("agent escrows the new lockout authorization", async {
                        agent
                            .escrow_tpm_lockout(&new_auth)
                            .await
                            .map_err(because("204"))?;
                        let c = agent.check_in().await.map_err(because("a check-in"))?;
                        ensure(
                            !c.rotate_tpm_lockout,
                            "rotate_tpm_lockout: false",
                            format!("{c:?}"),
                        )
                    })
                    .await
            }
            AfterRecovery::Keep => {
                self.steps
                    .run_async(
                        "the next check-in still asks to rotate the TPM lockout authorization",
                        async {
                            let c = agent.check_in().await.map_err(because("a check-in"))?;
                            ensure(
                                c.rotate_tpm_lockout,
                                "rotate_tpm_lockout: true (the value was not rotated)",
                                format!("{c:?}"),
                            )
                        },
                    )
                    .await
            }
        }
    }

    /// Phase 5, unlock: the key typed on the device must unlock it, the next boot is
    /// normal (unless the TPM, asked, is still locked out: a recovery key does not reset
    /// its lockout, and the story's next change judges that boot), and the outside tools
    /// (if any) open the volume with it.
    fn unlock(
        &mut self,
        d: &mut Provisioned,
        key_id: KeyProtectorId,
        password: &str,
    ) -> Result<(), Failure> {
        let (machine, pin) = (&mut d.machine, d.pin.as_deref());
        self.steps
            .run("the key from the portal unlocks the device", || {
                let recovered = machine
                    .enter_recovery_password(password, pin)
                    .map_err(because("a real unlock (VMK unwrap, sector decrypts)"))?;
                ensure(
                    recovered.via == key_id,
                    key_id.to_string(),
                    recovered.via.to_string(),
                )
            })?;
        let in_lockout = machine
            .tpm_in_lockout()
            .map_err(|e| failure("ask the TPM whether it is locked out", "inLockout", e))?;
        if in_lockout {
            self.steps.note(
                "the TPM is still locked out (a recovery key does not reset it): the next boot \
                 meets the lockout until the TPM forgets a failure",
            );
        } else {
            self.steps.run("the next boot opens without recovery", || {
                expect_unlocked(machine.boot(pin))
            })?;
        }
        let volume = JudgedVolume {
            image: machine.volume_image(),
            data_sha256: machine.volume_data_sha256(),
        };
        volume_check::portal_key_opens(
            &mut self.steps,
            self.volume_judges,
            volume,
            key_id,
            password,
        )
    }

    /// Phase 6, rotation: the single-use cycle (`after_recovery: rotate`) or the kept key
    /// (`keep`).
    async fn after_recovery(
        &mut self,
        d: &mut Provisioned,
        p: &Enrolled,
        key_id: KeyProtectorId,
        password: &str,
    ) -> Result<(), Failure> {
        match after_recovery(self.scenario) {
            AfterRecovery::Rotate => {
                let new = self.rotation_cycle(d, p, key_id, password).await?;
                let volume = JudgedVolume {
                    image: d.machine.volume_image(),
                    data_sha256: d.machine.volume_data_sha256(),
                };
                let new_password = new.recovery_password.to_string();
                volume_check::rotation_seen(
                    &mut self.steps,
                    self.volume_judges,
                    volume,
                    (key_id, password),
                    (new.key_protector_id, &new_password),
                )
            }
            AfterRecovery::Keep => self.keep_cycle(d, p, key_id, password).await,
        }
    }

    /// Checks the help desk's answer to a key lookup as self-service answers are checked:
    /// several matches are asked for all 32 digits before the key, and a refusal must be
    /// byte-identical to the one for a key ID that does not exist.
    #[allow(clippy::too_many_arguments)]
    async fn help_desk_answer(
        &mut self,
        expected: Expected,
        answer: Answer,
        operator: &mut HelpDeskOperator,
        end_user: Option<&str>,
        key_id: &KeyProtectorId,
        typed_len: usize,
        reason: &str,
    ) -> Result<Option<String>, Failure> {
        match expected {
            Expected::SeveralMatches => {
                self.steps
                    .run(step::SEVERAL_MATCHES, || match &answer.outcome {
                        Outcome::SeveralMatches(_) => Ok(()),
                        _ => Err((
                            "several matches: type all 32 digits".into(),
                            answer_words(&answer),
                        )),
                    })?;
                let full = key_id.to_string();
                let answer = self
                    .steps
                    .run_async("operator picks the key by all 32 digits", async {
                        operator
                            .lookup_key(&full, end_user, reason)
                            .await
                            .map_err(because("an answer page"))
                    })
                    .await?;
                self.expect_simple_answer(Expected::KeyShown, &answer)
            }
            Expected::Refused => {
                let absent = KeyProtectorId::random(&mut rand::rng());
                let (typed_real, typed_absent) = typed_pair(key_id, &absent, typed_len);
                self.probes.push(Probe::KeyId(typed_absent.clone()));
                let absent_answer = self
                    .steps
                    .run_async("operator looks up a key ID that does not exist", async {
                        operator
                            .lookup_key(&typed_absent, end_user, reason)
                            .await
                            .map_err(because("an answer page"))
                    })
                    .await?;
                self.steps.run(step::HELP_DESK_REFUSED, || {
                    identical_refusals(&answer, &typed_real, &absent_answer, &typed_absent)
                })?;
                Ok(None)
            }
            expected => self.expect_simple_answer(expected, &answer),
        }
    }

    /// Manage TPM refused: the answer must be byte-identical to the one for a computer
    /// that does not exist (same end user, same reason).
    async fn tpm_refusal_like_absent(
        &mut self,
        operator: &mut HelpDeskOperator,
        answer: &Answer,
        device_name: &str,
        end_user: Option<&str>,
        reason: &str,
    ) -> Result<(), Failure> {
        let absent = format!("PC-{:08X}", rand::rng().random::<u32>());
        self.probes.push(Probe::Computer(absent.clone()));
        let absent_answer = self
            .steps
            .run_async(
                "operator asks Manage TPM for a computer that does not exist",
                async {
                    operator
                        .manage_tpm(&absent, end_user, reason)
                        .await
                        .map_err(because("the Manage TPM answer"))
                },
            )
            .await?;
        self.steps.run(step::TPM_REFUSED, || {
            identical_refusals(answer, device_name, &absent_answer, &absent)
        })
    }

    /// A help desk operator, signed in, whose browser asks for the operator's language
    /// (the scenario's [`Scenario::browser_language`]); the pages must come in
    /// `recovery.language` (`<html lang>`; the help desk's forms themselves are English-only).
    async fn help_desk_operator(
        &mut self,
        username: &str,
        password: &str,
        recovery: &scenario::Recovery,
    ) -> Result<HelpDeskOperator, Failure> {
        let browser = self.scenario.browser_language(recovery);
        let mut operator = HelpDeskOperator::new(self.target, username)
            .map_err(|e| failure("open the help desk", "a client", e))?
            .with_language(browser.map(Language::accept_language));
        let language = recovery.language;
        self.steps
            .run_async("help desk operator signs in", async {
                operator
                    .sign_in(username, password)
                    .await
                    .map_err(because("the help desk form"))
            })
            .await?;
        if let Some(lang) = language {
            self.steps.run(&step::pages_in(lang.tag()), || {
                let html_lang = operator.page().and_then(|p| p.language());
                ensure(
                    html_lang.as_deref() == Some(lang.tag()),
                    format!("<html lang=\"{}\">", lang.tag()),
                    format!("<html lang={html_lang:?}>"),
                )
            })?;
        }
        Ok(operator)
    }

    /// Phase 3, the change and the boot after it, which must (or must not) end on the
    /// recovery screen the scenario expects: the screen, when it does.
    /// A story of several changes plays them in order, each judged against its own
    /// `expect` (only the last may end on the recovery screen), each on the device it
    /// names: the last change's device and its screen, when it shows one.
    fn change_and_boot(
        &mut self,
        i: usize,
        devices: &mut [Provisioned],
    ) -> Result<Option<(usize, RecoveryScreen)>, Failure> {
        let steps = self.scenario.steps();
        let several = steps.len() > 1;
        let mut screen = None;
        if let Some(&(change, expect)) = steps.get(i) {
            let at = self
                .scenario
                .device_index(change.device.as_deref())
                .ok_or_else(|| {
                    plain(
                        "find the change's device",
                        "a device of the story",
                        &format!("{:?}", change.device),
                    )
                })?;
            let Some(d) = devices.get_mut(at) else {
                return Err(plain(
                    "find the change's device",
                    "a provisioned device",
                    &format!("device {at}"),
                ));
            };
            let named = |name: &str| {
                if several {
                    step::of_change(name, i + 1)
                } else {
                    name.to_string()
                }
            };
            if let Some(secs) = self.scenario.changes.get(i).and_then(|c| c.wait_secs) {
                // Real time: the TPM forgets failures by its own clock.
                self.steps
                    .run(&named(&format!("the story waits {secs} s")), || {
                        std::thread::sleep(Duration::from_secs(u64::from(secs)));
                        Ok(())
                    })?;
            }
            screen = self
                .one_change(d, change, expect, &named)?
                .map(|screen| (at, screen));
            if let Some(want) = expect.tpm_failed_tries {
                let machine = &mut d.machine;
                self.steps.run(&named(step::FAILED_TRIES), || {
                    let counted = machine
                        .tpm_lockout_counter()
                        .map_err(because("TPM_PT_LOCKOUT_COUNTER"))?;
                    ensure(
                        counted == want,
                        format!("{want} failure(s) counted"),
                        format!("{counted} failure(s) counted"),
                    )
                })?;
            }
        }
        Ok(screen)
    }

    /// One change and the boot after it, judged against `expect`.
    fn one_change(
        &mut self,
        d: &mut Provisioned,
        change: &scenario::Change,
        expect: &scenario::Expect,
        named: &dyn Fn(&str) -> String,
    ) -> Result<Option<RecoveryScreen>, Failure> {
        if change.kind == ChangeKind::None {
            return Ok(None);
        }
        let threshold = d.spec.lockout_threshold;
        let (machine, pin) = (&mut d.machine, d.pin.as_deref());
        let after_wrong_pins = if change.kind == ChangeKind::LostPin {
            self.wrong_pins(machine, threshold, change, named)?
        } else {
            self.apply_change(machine, change, named)?;
            None
        };
        // After the wrong PINs the user does what the scenario says (`change.then`); what
        // follows is checked against the scenario's expectations.
        let (next, step) = match after_wrong_pins {
            Some(last) => match change.pin_action() {
                PinAction::Esc => match last {
                    BootOutcome::WrongPin { .. } => (NextBoot::EscAtPinPrompt, step::PIN_ESC),
                    other => (NextBoot::Already(other), step::PIN_LOCKED_OUT),
                },
                // A new boot: a locked-out device shows no PIN prompt until it restarts.
                PinAction::RightPin => (NextBoot::Boot, step::PIN_RIGHT),
            },
            None => (NextBoot::Boot, step::BOOT),
        };
        let screen = self.steps.run(&named(step), || {
            // The boot runs inside the step, so the step's time is the boot's.
            let outcome = match next {
                NextBoot::Boot => machine.boot(pin),
                NextBoot::EscAtPinPrompt => machine
                    .choose_recovery_at_pin_prompt()
                    .map(|screen| BootOutcome::Recovery(Box::new(screen))),
                NextBoot::Already(outcome) => Ok(outcome),
            };
            judge_boot(expect, outcome.map_err(because("a boot"))?)
        })?;
        if let Some(screen) = &screen {
            self.facts.tpm_error = Some(screen.cause.name());
            self.facts.tpm_response_code = screen.tpm_response_code;
            self.facts.changed_pcrs = screen.explanation.pcrs();
            self.facts.explanation = Some(screen.explanation.to_string());
            self.facts.recovery_key_id = Some(screen.key_id.to_string());
            self.steps.note(format!(
                "recovery screen: key ID {}, {}",
                screen.key_id,
                screen.cause.name()
            ));
        } else if !expect.recovery {
            // A control: the next boot must be normal too.
            self.steps
                .run(&named("the boot after that is normal too"), || {
                    expect_unlocked(machine.boot(pin))
                })?;
        }
        Ok(screen)
    }

    /// `lost_pin`: exactly `wrong_pins` wrong PINs, each answered by the TPM: a counted
    /// failure up to the threshold, a lockout after it. The last one's outcome: the device
    /// is at the PIN prompt or on the recovery screen the TPM's lockout put it on.
    fn wrong_pins(
        &mut self,
        machine: &mut Machine,
        threshold: u32,
        change: &scenario::Change,
        named: &dyn Fn(&str) -> String,
    ) -> Result<Option<BootOutcome>, Failure> {
        // Failures an earlier step left and the TPM has not forgotten yet count too.
        let before = machine
            .tpm_lockout_counter()
            .map_err(|e| failure("read the TPM's failure counter", "a counter", e))?;
        let mut last = None;
        for typed in 1..=change.wrong_pins.unwrap_or(0) {
            let attempt = before + typed;
            let counted = format!("TPM_RC_AUTH_FAIL with the lockout counter at {attempt}");
            // The boot runs inside the step, so the step's time is the boot's.
            let outcome =
                self.steps.run(&named(&format!("wrong PIN #{typed}")), || {
                    match machine.boot(Some("000000-wrong")) {
                        Ok(BootOutcome::WrongPin { lockout_counter }) if attempt <= threshold => {
                            ensure(
                                lockout_counter == attempt,
                                counted.clone(),
                                format!("counter {lockout_counter}"),
                            )?;
                            Ok(BootOutcome::WrongPin { lockout_counter })
                        }
                        Ok(BootOutcome::Recovery(screen))
                            if attempt > threshold && screen.cause == TpmError::LockedOut =>
                        {
                            Ok(BootOutcome::Recovery(screen))
                        }
                        Ok(other) => Err((
                            if attempt <= threshold {
                                counted.clone()
                            } else {
                                format!("TPM_RC_LOCKOUT: {threshold} failures reached")
                            },
                            match other {
                                BootOutcome::Recovery(screen) => {
                                    format!("the recovery screen with {}", screen.cause.name())
                                }
                                other => other.to_string(),
                            },
                        )),
                        Err(e) => Err(("a refused PIN".into(), e.to_string())),
                    }
                })?;
            last = Some(outcome);
        }
        Ok(last)
    }

    /// Any other change: applied to the device (a step), with the PCR values the device
    /// model predicts for it kept for the report.
    fn apply_change(
        &mut self,
        machine: &mut Machine,
        step: &scenario::Change,
        named: &dyn Fn(&str) -> String,
    ) -> Result<(), Failure> {
        if let Some(suspend) = step.suspend {
            let n = suspend.reboots;
            self.steps.run(
                &named(&format!("BitLocker is suspended for {n} reboot(s)")),
                || {
                    machine
                        .suspend_protection(n)
                        .map_err(because("the suspension"))
                },
            )?;
        }
        let Some(change) = step.device_change() else {
            return Ok(());
        };
        let predicted = machine.device().clone().with(&change);
        self.steps.run(
            &named(&format!("apply the change: {}", serde_name(&step.kind))),
            || {
                machine
                    .apply(&change)
                    .map_err(because("the change applies"))
            },
        )?;
        if let Ok(predicted) = predicted {
            // At the unseal point, in the bank sealed to (a real log may be SHA-1).
            let boot = predicted.measured_boot();
            let at_unseal = boot.at_unseal();
            let predicted_values: Vec<(u32, Vec<u8>)> = machine
                .profile()
                .pcrs()
                .iter()
                .filter_map(|&p| at_unseal.get(boot.bank(), p).map(|v| (p, v.to_vec())))
                .collect();
            self.facts.explanation = Some(format!(
                "predicted before the change: {}",
                fmt_pcrs(&predicted_values)
            ));
        }
        Ok(())
    }

    /// The user's part of a self-service recovery, in whichever client plays it.
    async fn self_service(
        &mut self,
        recovery: &scenario::Recovery,
        user: &mut User,
        username: &str,
        password: &str,
        key_id: &KeyProtectorId,
        typed_id: &str,
    ) -> Result<Option<String>, Failure> {
        let s = self.scenario;
        self.steps
            .run_async("user signs in and accepts the notice", async {
                user.sign_in_and_accept(username, password)
                    .await
                    .map_err(because("the key form"))
            })
            .await?;
        if let Some(lang) = recovery.language {
            self.steps
                .run_async(&step::pages_in(lang.tag()), async {
                    let (html_lang, label) = user
                        .language_and_get_key()
                        .await
                        .map_err(because("<html lang> and the Get Key button"))?;
                    let want = get_key_label(lang.tag()).unwrap_or_default();
                    ensure(
                        html_lang == lang.tag() && label.as_deref() == Some(want),
                        format!("<html lang=\"{}\"> and the button \"{want}\"", lang.tag()),
                        format!(
                            "<html lang=\"{html_lang}\"> and {}",
                            button_words(label.as_deref())
                        ),
                    )
                })
                .await?;
        }
        if let Some(idle) = s.checks.idle_expiry {
            let warning = user.idle_warning().await;
            self.steps.run("the page carries the idle warning", || {
                let w = warning
                    .map_err(because("the page"))?
                    .ok_or(("an idle-warning block".to_string(), "none".to_string()))?;
                ensure(
                    w.hidden
                        && w.has_continue
                        && w.countdown_secs == Some(u64::from(idle.warning_secs)),
                    format!(
                        "a hidden warning with a {} s countdown and a continue button",
                        idle.warning_secs
                    ),
                    format!("{w:?}"),
                )
            })?;
            if let User::Chrome(c) = user {
                let late = LateRequest {
                    username,
                    password,
                    typed_id,
                    reason: recovery.reason.as_str(),
                };
                return self.idle_in_browser(c, idle, late).await;
            }
            tokio::time::sleep(Duration::from_millis(
                u64::from(idle.idle_secs + idle.warning_secs) * 1000 + 700,
            ))
            .await;
        }
        let answer = self
            .steps
            .run_async(
                &format!(
                    "user types {} digits of the key ID and a reason",
                    typed_id.len()
                ),
                async {
                    user.request_key(typed_id, recovery.reason.as_str())
                        .await
                        .map_err(because("an answer page"))
                },
            )
            .await?;
        self.expect_answer(
            recovery.answer,
            answer,
            user,
            key_id,
            typed_id.len(),
            recovery.reason.as_str(),
        )
        .await
    }

    /// Inactivity as the person sees it: the warning appears, its countdown runs, nobody
    /// answers, the page goes to the expiry page, and the server refuses the old session
    /// (the browser still sends its cookie).
    async fn idle_in_browser(
        &mut self,
        c: &mut ChromeUser,
        idle: IdleExpiry,
        late: LateRequest<'_>,
    ) -> Result<Option<String>, Failure> {
        let cookie = self
            .steps
            .run_async("the browser holds a session cookie", async {
                c.session_cookie()
                    .await
                    .map_err(because("cookies"))?
                    .ok_or(("a portal_session cookie".to_string(), "none".to_string()))
            })
            .await?;
        let warn = u64::from(idle.warning_secs);
        let first = self
            .steps
            .run_async(
                &format!("the warning appears after {} idle seconds", idle.idle_secs),
                async {
                    let w = c
                        .wait_for_idle_warning(Duration::from_secs(u64::from(idle.idle_secs) + 5))
                        .await
                        .map_err(because("the warning on screen"))?;
                    let n = w.countdown_secs.unwrap_or(u64::MAX);
                    ensure(
                        w.has_continue && n <= warn,
                        format!("a countdown of at most {warn} s and a continue button"),
                        format!("{w:?}"),
                    )?;
                    Ok(n)
                },
            )
            .await?;
        let _ = c.screenshot("idle-warning").await;
        if warn >= 2 {
            self.steps
                .run_async("the countdown counts down", async {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                    let later = c
                        .idle_warning()
                        .await
                        .map_err(because("the warning"))?
                        .and_then(|w| w.countdown_secs);
                    ensure(
                        later.is_some_and(|n| n < first),
                        format!("less than {first} a second later"),
                        format!("{later:?}"),
                    )
                })
                .await?;
        }
        self.steps
            .run_async("with no answer the page goes to the expiry page", async {
                let page = c
                    .wait_for_expiry_page(Duration::from_secs(warn + 5))
                    .await
                    .map_err(because("the expiry page"))?;
                ensure(
                    page.has("expired") && page.status == 200,
                    "id=\"expired\" (status 200)",
                    format!("status {} at {}", page.status, page.url.path()),
                )
            })
            .await?;
        let _ = c.screenshot("expired").await;
        self.steps
            .run_async("the server refuses the old session", async {
                let still = c.session_cookie().await.map_err(because("cookies"))?;
                ensure(
                    still.as_deref() == Some(cookie.as_str()),
                    "the browser still sends the old cookie",
                    format!("{still:?}"),
                )?;
                c.open("/SelfService")
                    .await
                    .map_err(because("the key page"))?;
                let page = c.page().await.map_err(because("a page"))?;
                let answer = Answer::from_page(&page);
                ensure(
                    matches!(answer.outcome, Outcome::SignedOut | Outcome::Expired),
                    "the sign-in page (no session) or the expiry page",
                    format!("{:?} at {}", answer.outcome, page.url.path()),
                )
            })
            .await?;
        if states_expired_session_row(self.scenario) {
            self.late_request_in_browser(c, idle, late).await?;
        }
        Ok(None)
    }

    /// The expired session the audit records, as a browser meets it: the page's own timers
    /// did not run (a laptop that slept with the portal open, a frozen tab), so nothing
    /// left the key form; the user comes back and presses Get Key on the expired session.
    /// (A page whose timers run goes to the expiry page itself, which ends the session, so
    /// its key request never reaches an expired one.)
    async fn late_request_in_browser(
        &mut self,
        c: &mut ChromeUser,
        idle: IdleExpiry,
        late: LateRequest<'_>,
    ) -> Result<(), Failure> {
        self.steps
            .run_async(
                "user signs in again; the page sleeps past the idle timeout",
                async {
                    c.sign_in_and_accept(late.username, late.password)
                        .await
                        .map_err(because("the key form"))?;
                    // Stops every timer of the page (ids are small consecutive integers).
                    c.execute(
                        "const last = setTimeout(function () {}, 0); \
                         for (let i = 0; i <= last; i++) { clearTimeout(i); clearInterval(i); } \
                         return null;",
                    )
                    .await
                    .map_err(because("the page's timers stopped"))?;
                    tokio::time::sleep(Duration::from_millis(
                        u64::from(idle.idle_secs + idle.warning_secs) * 1000 + 700,
                    ))
                    .await;
                    Ok(())
                },
            )
            .await?;
        self.steps
            .run_async(
                "a late Get Key on the expired session gets the expiry page",
                async {
                    let a = c
                        .request_key(late.typed_id, late.reason)
                        .await
                        .map_err(because("an answer page"))?;
                    ensure(
                        matches!(a.outcome, Outcome::Expired),
                        "the expiry page",
                        answer_words(&a),
                    )
                },
            )
            .await
    }

    async fn expect_answer(
        &mut self,
        expected: Expected,
        answer: Answer,
        user: &mut User,
        key_id: &KeyProtectorId,
        typed_len: usize,
        reason: &str,
    ) -> Result<Option<String>, Failure> {
        if expected == Expected::SeveralMatches {
            self.steps
                .run(step::SEVERAL_MATCHES, || match &answer.outcome {
                    Outcome::SeveralMatches(_) => Ok(()),
                    _ => Err((
                        "several matches: type all 32 digits".into(),
                        answer_words(&answer),
                    )),
                })?;
            let full = key_id.to_string();
            let answer = self
                .steps
                .run_async("user types all 32 digits", async {
                    user.request_key(&full, reason)
                        .await
                        .map_err(because("an answer page"))
                })
                .await?;
            return self.expect_simple_answer(Expected::KeyShown, &answer);
        }
        if expected == Expected::Refused {
            // Whatever came instead of a refusal fails at the refusal's step, before the
            // absent-key probe runs into it (an expired session, say) somewhere else.
            if !matches!(answer.outcome, Outcome::NotFound(_)) {
                self.steps.run(step::REFUSED_LIKE_ABSENT, || {
                    Err((
                        "not found, like an absent key ID".to_string(),
                        answer_words(&answer),
                    ))
                })?;
            }
            let absent = KeyProtectorId::random(&mut rand::rng());
            // The same number of digits as the user typed for the real one.
            let (typed_real, typed_absent) = typed_pair(key_id, &absent, typed_len);
            self.probes.push(Probe::KeyId(typed_absent.clone()));
            let absent_answer = self
                .steps
                .run_async("user asks for a key ID that does not exist", async {
                    user.request_key(&typed_absent, reason)
                        .await
                        .map_err(because("an answer page"))
                })
                .await?;
            self.steps.run(step::REFUSED_LIKE_ABSENT, || {
                identical_refusals(&answer, &typed_real, &absent_answer, &typed_absent)
            })?;
            return Ok(None);
        }
        self.expect_simple_answer(expected, &answer)
    }

    fn expect_simple_answer(
        &mut self,
        expected: Expected,
        answer: &Answer,
    ) -> Result<Option<String>, Failure> {
        self.steps
            .run(step::ANSWER, || match (expected, &answer.outcome) {
                (Expected::KeyShown | Expected::SeveralMatches, Outcome::KeyShown(key)) => {
                    RecoveryPassword::parse(key).map_err(|e| {
                        (
                            "a valid 48-digit recovery password".to_string(),
                            format!("{key}: {e}"),
                        )
                    })?;
                    Ok(Some(key.clone()))
                }
                (Expected::HelpdeskMessage, Outcome::HelpDeskMessage(_)) => Ok(None),
                (Expected::Refused, Outcome::NotFound(_)) => Ok(None),
                (Expected::Expired, Outcome::Expired) => Ok(None),
                (expected, _) => Err((serde_name(&expected), answer_words(answer))),
            })
    }

    async fn rotation_cycle(
        &mut self,
        d: &mut Provisioned,
        p: &Enrolled,
        old_id: KeyProtectorId,
        old_password: &str,
    ) -> Result<EscrowedKey, Failure> {
        let (machine, device, names) = (&mut d.machine, &d.spec, &d.names);
        let (agent, passwords) = (&p.agent, &p.passwords);
        let old = old_id.to_string();
        self.steps
            .run_async("agent check-in is told to rotate the shown key", async {
                let c = agent.check_in().await.map_err(because("a check-in"))?;
                ensure(
                    c.rotate_keys.iter().any(|k| k.eq_ignore_ascii_case(&old)),
                    format!("rotate_keys containing {old}"),
                    format!("{:?}", c.rotate_keys),
                )
            })
            .await?;
        let new = self
            .steps
            .run("the device makes a new recovery password", || {
                machine
                    .rotate_recovery_password(old_id, &mut rand::rng())
                    .map_err(because("a new protector"))
            })?;
        let new_id = new.key_protector_id.to_string();
        self.steps
            .run_async(
                "agent escrows the new pair and confirms the rotation",
                async {
                    agent
                        .escrow_key(&escrow_key(&new))
                        .await
                        .map_err(because("201 Created"))?;
                    let r = agent
                        .confirm_rotation(&old, &new_id)
                        .await
                        .map_err(because("the rotation"))?;
                    ensure(
                        r.superseded.eq_ignore_ascii_case(&old),
                        old.clone(),
                        r.superseded,
                    )
                },
            )
            .await?;
        let old_password = RecoveryPassword::parse(old_password)
            .map_err(|e| plain("parse the old key", "a valid password", &e.to_string()))?;
        self.steps
            .run("the old password no longer unlocks the device", || {
                let unlocks = machine
                    .password_unlocks(&old_password)
                    .map_err(because("a check"))?;
                ensure(!unlocks, "the MAC check fails", "it still unlocks")
            })?;
        // The portal no longer offers it: the device's user asks for it by all 32 digits.
        self.local_user_asks_for(
            "the portal no longer offers the old key",
            device,
            names,
            passwords,
            &old,
            |outcome| {
                ensure(
                    matches!(outcome, Outcome::NotFound(_)),
                    "not found",
                    format!("{outcome:?}"),
                )
            },
        )
        .await?;
        Ok(new)
    }

    /// The device's user (the scenario's user who signs in locally, if any) signs in to
    /// the portal and asks for `key_id` by all 32 digits: one step, named `step`, whose
    /// answer `judge` checks. The request is a harness probe in the audit comparison.
    async fn local_user_asks_for(
        &mut self,
        step: &str,
        device: &scenario::Device,
        names: &Names,
        passwords: &std::collections::HashMap<String, String>,
        key_id: &str,
        judge: impl FnOnce(&Outcome) -> StepResult<()>,
    ) -> Result<(), Failure> {
        let s = self.scenario;
        let Some(user) = s.users.iter().find(|u| s.signed_in_locally(u, device)) else {
            return Ok(());
        };
        self.probes.push(Probe::KeyId(key_id.to_string()));
        let user_password = passwords
            .get(&user.name.to_lowercase())
            .cloned()
            .unwrap_or_default();
        let mut browser = BrowserUser::new(self.target, &names.user(&user.name))
            .map_err(|e| failure("open the portal", "a client", e))?;
        self.steps
            .run_async(step, async {
                browser
                    .sign_in_and_accept(&names.user(&user.name), &user_password)
                    .await
                    .map_err(because("the key form"))?;
                let a = browser
                    .request_key(key_id, "BIOS/TPM changed")
                    .await
                    .map_err(because("an answer page"))?;
                judge(&a.outcome)
            })
            .await
    }

    /// `after_recovery: keep`: the agent does not rotate the shown key. The portal asks it
    /// to, the key still unlocks the device, the portal still shows it to its user, and
    /// the next check-in asks again.
    async fn keep_cycle(
        &mut self,
        d: &Provisioned,
        p: &Enrolled,
        key_id: KeyProtectorId,
        password: &str,
    ) -> Result<(), Failure> {
        let (machine, device, names) = (&d.machine, &d.spec, &d.names);
        let (agent, passwords) = (&p.agent, &p.passwords);
        let id = key_id.to_string();
        let asks_to_rotate = |c: &portal_client::CheckIn| {
            ensure(
                c.rotate_keys.iter().any(|k| k.eq_ignore_ascii_case(&id)),
                format!("rotate_keys containing {id}"),
                format!("{:?}", c.rotate_keys),
            )
        };
        self.steps
            .run_async("agent check-in is told to rotate the shown key", async {
                asks_to_rotate(&agent.check_in().await.map_err(because("a check-in"))?)
            })
            .await?;
        let kept = RecoveryPassword::parse(password)
            .map_err(|e| plain("parse the shown key", "a valid password", &e.to_string()))?;
        self.steps.run(
            "the agent keeps the key: the old password still unlocks the device",
            || {
                let unlocks = machine
                    .password_unlocks(&kept)
                    .map_err(because("a check"))?;
                ensure(unlocks, "the key still unlocks", "the MAC check fails")
            },
        )?;
        self.local_user_asks_for(
            "the portal still shows the kept key to its user",
            device,
            names,
            passwords,
            &id,
            |outcome| {
                ensure(
                    matches!(outcome, Outcome::KeyShown(k) if k == password),
                    "the same key shown again",
                    format!("{outcome:?}"),
                )
            },
        )
        .await?;
        self.steps
            .run_async("the next check-in still asks to rotate it", async {
                asks_to_rotate(&agent.check_in().await.map_err(because("a check-in"))?)
            })
            .await
    }

    /// In a story of several devices, each device no change acted on is untouched by the
    /// story's recovery: it still boots without help, and its agent's check-in is asked to
    /// rotate nothing (no key, no TPM lockout authorization: the portal showed none of its).
    async fn untouched_devices(
        &mut self,
        devices: &mut [Provisioned],
        portal: &[Enrolled],
    ) -> Result<(), Failure> {
        let s = self.scenario;
        if devices.len() < 2 {
            return Ok(());
        }
        let acted_on: Vec<usize> = s
            .steps()
            .iter()
            .filter_map(|(c, _)| s.device_index(c.device.as_deref()))
            .collect();
        for (i, (d, p)) in devices.iter_mut().zip(portal).enumerate() {
            if acted_on.contains(&i) {
                continue;
            }
            let (machine, pin) = (&mut d.machine, d.pin.as_deref());
            self.steps.run(
                &self.of_device("an untouched device still boots without help", i),
                || expect_unlocked(machine.boot(pin)),
            )?;
            let step = self.of_device(
                "an untouched device's check-in is asked to rotate nothing",
                i,
            );
            self.steps
                .run_async(&step, async {
                    let c = p.agent.check_in().await.map_err(because("a check-in"))?;
                    ensure(
                        c.rotate_keys.is_empty() && !c.rotate_tpm_lockout,
                        "rotate_keys: [], rotate_tpm_lockout: false",
                        format!("{c:?}"),
                    )
                })
                .await?;
        }
        Ok(())
    }

    /// Phase 7, the checks of the portal alone (`checks.foreign_key_request`,
    /// `checks.audit`), whatever came before.
    async fn portal_only_checks(
        &mut self,
        devices: &[Provisioned],
        portal: &[Enrolled],
    ) -> Result<(), Failure> {
        let s = self.scenario;
        if let Some(foreign) = &s.checks.foreign_key_request {
            let at = s.device_index(foreign.device.as_deref());
            if let (Some(d), Some(p)) = (
                at.and_then(|i| devices.get(i)),
                at.and_then(|i| portal.get(i)),
            ) {
                self.foreign_key_request(foreign, d, p).await?;
            }
        }
        if s.checks.audit_absent.is_empty() && s.checks.audit.is_empty() {
            return Ok(());
        }
        // One read of the audit log serves both checks.
        let rows = self.story_audit_rows(devices).await;
        if !s.checks.audit_absent.is_empty() {
            self.audit_absent_check(rows.clone())?;
        }
        if !s.checks.audit.is_empty() {
            self.audit_check(rows)?;
        }
        Ok(())
    }

    /// `checks.foreign_key_request`: a user with no sign-in on the device asks for its key
    /// ID and gets the answer an absent key ID gets, byte for byte.
    async fn foreign_key_request(
        &mut self,
        foreign: &scenario::ForeignKeyRequest,
        d: &Provisioned,
        p: &Enrolled,
    ) -> Result<(), Failure> {
        let (names, passwords, machine, escrow) = (&d.names, &p.passwords, &d.machine, &d.escrow);
        let key_id = machine
            .recovery_key_ids()
            .first()
            .copied()
            .or_else(|| escrow.first().map(|k| k.key_protector_id))
            .ok_or_else(|| plain("foreign key request", "a key ID", "none"))?;
        let password = passwords
            .get(&foreign.as_user.to_lowercase())
            .cloned()
            .unwrap_or_default();
        let mut user = BrowserUser::new(self.target, &names.user(&foreign.as_user))
            .map_err(|e| failure("open the portal", "a client", e))?;
        let absent = KeyProtectorId::random(&mut rand::rng());
        self.probes.push(Probe::KeyId(absent.first8()));
        self.steps
            .run_async(
                "someone else's key ID is answered exactly like an absent one",
                async {
                    user.sign_in_and_accept(&names.user(&foreign.as_user), &password)
                        .await
                        .map_err(because("the key form"))?;
                    let theirs = user
                        .request_key(&key_id.first8(), "BIOS/TPM changed")
                        .await
                        .map_err(because("an answer"))?;
                    let nobody = user
                        .request_key(&absent.first8(), "BIOS/TPM changed")
                        .await
                        .map_err(because("an answer"))?;
                    ensure(
                        matches!(theirs.outcome, Outcome::NotFound(_))
                            && theirs.status == nobody.status
                            && same_body(
                                &theirs.body,
                                &key_id.first8(),
                                &nobody.body,
                                &absent.first8(),
                            ),
                        format!(
                            "identical not-found answers: status {} body of {} bytes",
                            nobody.status,
                            nobody.body.len()
                        ),
                        format!(
                            "{:?}, status {}, body of {} bytes",
                            theirs.outcome,
                            theirs.status,
                            theirs.body.len()
                        ),
                    )
                },
            )
            .await?;
        Ok(())
    }

    /// The portal's audit rows for this story (its device and its users), in order, each
    /// as (source, outcome) and whether it is one of the harness's own probes.
    async fn story_audit_rows(&self, devices: &[Provisioned]) -> StoryAuditRows {
        let s = self.scenario;
        let admin = Admin::new(self.target).map_err(because("an admin client"))?;
        let Some(names) = devices.first().map(|d| &d.names) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let computers: Vec<&str> = devices.iter().map(|d| d.device_name.as_str()).collect();
        let users: Vec<String> = s.users.iter().map(|u| names.user(&u.name)).collect();
        let rows = admin
            .audit(&AuditQuery::default())
            .await
            .map_err(because("audit rows"))?;
        let mine: Vec<&AuditRow> = rows
            .iter()
            .filter(|r| {
                r.device
                    .as_deref()
                    .is_some_and(|d| computers.iter().any(|c| c.eq_ignore_ascii_case(d)))
                    || r.requester
                        .as_deref()
                        .is_some_and(|q| users.iter().any(|u| u.eq_ignore_ascii_case(q)))
                    || r.end_user
                        .as_deref()
                        .is_some_and(|q| users.iter().any(|u| u.eq_ignore_ascii_case(q)))
            })
            .collect();
        let probe = probe_rows(&mine, &self.probes);
        let mine = mine
            .iter()
            .map(|r| (r.source.clone(), r.outcome.clone()))
            .collect();
        Ok((mine, probe))
    }

    /// `checks.audit_absent`: none of the story's rows (the harness's probes aside) is one
    /// the scenario says must not exist.
    fn audit_absent_check(&mut self, found: StoryAuditRows) -> Result<(), Failure> {
        let absent: Vec<(String, String)> = self
            .scenario
            .checks
            .audit_absent
            .iter()
            .map(|e| (serde_name(&e.source), serde_name(&e.outcome)))
            .collect();
        self.steps.run(step::AUDIT_ABSENT, || {
            let (rows, probe) = found?;
            let present: Vec<String> = rows
                .iter()
                .zip(&probe)
                .filter(|(row, &p)| !p && absent.contains(row))
                .map(|((source, outcome), _)| format!("{source} {outcome}"))
                .collect();
            ensure(
                present.is_empty(),
                format!("no row {}", rows_words(&absent)),
                present.join(", "),
            )
        })
    }

    /// `checks.audit`: the portal's audit rows for this story, in order, with only the
    /// harness's own probe rows between them.
    fn audit_check(&mut self, found: StoryAuditRows) -> Result<(), Failure> {
        let want: Vec<(String, String)> = self
            .scenario
            .checks
            .audit
            .iter()
            .map(|e| (serde_name(&e.source), serde_name(&e.outcome)))
            .collect();
        self.steps.run(step::AUDIT, || {
            let (mine, probe) = found?;
            // Every row the story caused, and no other but the harness's probes: a stated
            // row another row could stand in for would let a wrong outcome pass.
            let got: Vec<String> = mine
                .iter()
                .zip(&probe)
                .map(|((source, outcome), &p)| {
                    let mark = if p { " (harness probe)" } else { "" };
                    format!("{source} {outcome}{mark}")
                })
                .collect();
            ensure(
                audit_matches(&want, &mine, &probe),
                format!(
                    "{} in this order: every row of the story, probe rows optional",
                    rows_words(&want)
                ),
                got.join(", "),
            )
        })
    }
}

/// What the portal answered, in the scenario's `answer` words, with the status.
fn answer_words(answer: &Answer) -> String {
    let what = match &answer.outcome {
        Outcome::KeyShown(key) => format!("key_shown, the key {key}"),
        Outcome::LockoutAuth(_) => "lockout_auth_shown".to_string(),
        Outcome::SeveralMatches(ids) if ids.is_empty() => "several_matches".to_string(),
        Outcome::SeveralMatches(ids) => format!("several_matches ({} key IDs listed)", ids.len()),
        Outcome::HelpDeskMessage(_) => "helpdesk_message".to_string(),
        Outcome::NotFound(text) => format!("refused: {}", text.to_lowercase()),
        Outcome::Expired => "expired (the expiry page)".to_string(),
        Outcome::Invalid(text) => format!("a field refused: {text}"),
        Outcome::RateLimited(text) => format!("rate limited: {text}"),
        Outcome::SignedOut => "the sign-in page (no session)".to_string(),
        Outcome::Refused(text) => format!("an error page: {text}"),
        Outcome::Unrecognised => "a page with none of the documented elements".to_string(),
    };
    format!("{what} (status {})", answer.status)
}

/// Audit rows as `checks.audit` writes them: `self_service shown, help_desk denied`.
fn rows_words(rows: &[(String, String)]) -> String {
    if rows.is_empty() {
        return "none".to_string();
    }
    rows.iter()
        .map(|(source, outcome)| format!("{source} {outcome}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Get Key button's label as read off the page.
fn button_words(label: Option<&str>) -> String {
    match label {
        Some(label) => format!("the button \"{label}\""),
        None => "no Get Key button".to_string(),
    }
}

/// Settings an idle-expiry scenario needs, and the ones to put back afterwards.
pub fn idle_settings(scenario: &Scenario) -> Option<SettingsPatch> {
    scenario.checks.idle_expiry.map(|idle| SettingsPatch {
        idle_timeout_secs: Some(u64::from(idle.idle_secs)),
        warning_secs: Some(u64::from(idle.warning_secs)),
        ..SettingsPatch::default()
    })
}

/// How the runner sets BitLocker up on a scenario's device (profile, TPM or TPM+PIN,
/// recovery passwords, dictionary-attack threshold).
pub fn bitlocker_setup(d: &scenario::Device) -> Result<BitLockerSetup, Failure> {
    let protection = if d.protectors.contains(&ProtectorKind::TpmPin) {
        TpmProtection::TpmPin {
            pin: d.pin.clone().unwrap_or_default(),
        }
    } else {
        TpmProtection::Tpm
    };
    let key_id_prefix = match &d.key_id_prefix {
        Some(hex) => Some(
            u32::from_str_radix(hex, 16)
                .map_err(|e| plain("read key_id_prefix", "8 hex digits", &format!("{hex}: {e}")))?,
        ),
        None => None,
    };
    Ok(BitLockerSetup {
        profile: d.profile.device_profile(),
        protection,
        recovery_passwords: usize::from(d.recovery_passwords.max(1)),
        key_id_prefix,
        dictionary_attack: device::machine::DaParameters {
            max_tries: d.lockout_threshold,
            recovery_time_secs: d.failure_forgotten_secs,
            ..WINDOWS_DA
        },
        cipher: d.volume_cipher.fve_cipher(),
    })
}

/// The synthetic model for the device's profile (a BIOS machine for `legacy`, UEFI with
/// Secure Boot otherwise), or a device booting its real log (read by the loader).
pub fn scenario_device(d: &scenario::Device) -> Result<Device, Failure> {
    match (&d.event_log, &d.real_log) {
        (None, _) => Ok(match d.profile {
            scenario::Profile::Legacy => Device::legacy_bios(),
            scenario::Profile::SecureBoot | scenario::Profile::Uefi => Device::default(),
        }),
        (Some(path), Some(log)) => Ok(Device::from_real_log(
            path.display().to_string(),
            log.clone(),
        )),
        (Some(path), None) => Err(plain(
            "read device.event_log",
            "a log read by the scenario loader",
            &format!("{} was not loaded", path.display()),
        )),
    }
}

/// Whether two answers are byte-identical once the key ID each user typed (which the form
/// echoes back into its input field) is blanked out.
fn same_body(a: &str, typed_a: &str, b: &str, typed_b: &str) -> bool {
    a.replace(typed_a, "<typed>") == b.replace(typed_b, "<typed>")
}

/// What a browser user needs to send a late key request.
struct LateRequest<'a> {
    username: &'a str,
    password: &'a str,
    typed_id: &'a str,
    reason: &'a str,
}

/// Whether the scenario states an `expired_session` audit row.
fn states_expired_session_row(s: &Scenario) -> bool {
    s.checks
        .audit
        .iter()
        .any(|row| row.outcome == scenario::AuditOutcome::ExpiredSession)
}

/// What the agent does after a shown key or lockout authorization (`rotate` unless the
/// scenario says `keep`).
fn after_recovery(s: &Scenario) -> AfterRecovery {
    s.checks.after_recovery.unwrap_or(AfterRecovery::Rotate)
}

/// The key ID typed for the real key and for an absent one, with the same digit count.
fn typed_pair(
    real: &KeyProtectorId,
    absent: &KeyProtectorId,
    typed_len: usize,
) -> (String, String) {
    if typed_len == 8 {
        (real.first8(), absent.first8())
    } else {
        (real.to_string(), absent.to_string())
    }
}

/// A refusal ("not found") byte-identical, status and body, to the answer for something
/// that does not exist, once each typed input the page echoes is blanked out.
fn identical_refusals(
    answer: &Answer,
    typed: &str,
    absent_answer: &Answer,
    typed_absent: &str,
) -> StepResult<()> {
    ensure(
        matches!(answer.outcome, Outcome::NotFound(_))
            && answer.status == absent_answer.status
            && same_body(&answer.body, typed, &absent_answer.body, typed_absent),
        format!(
            "not found, identical to the answer for an absent one (status {}, {} bytes)",
            absent_answer.status,
            absent_answer.body.len()
        ),
        format!(
            "{:?} with status {}, {} bytes",
            answer.outcome,
            answer.status,
            answer.body.len()
        ),
    )
}

/// What the step after the change does to reach the screen it judges.
enum NextBoot {
    /// Boot the device (with the user's PIN, if any).
    Boot,
    /// The user presses Esc at the PIN prompt the wrong PINs left.
    EscAtPinPrompt,
    /// Nothing more: the wrong PINs already ended on the recovery screen.
    Already(BootOutcome),
}

/// Judges the boot after the change against the scenario's `expect`: the recovery screen
/// (with the TPM error and the changed PCRs it states), or a normal boot.
fn judge_boot(
    expect: &scenario::Expect,
    outcome: BootOutcome,
) -> StepResult<Option<RecoveryScreen>> {
    match (outcome, expect.recovery) {
        (BootOutcome::Recovery(screen), true) => {
            let want = expect.tpm_error;
            ensure(
                screen.cause == want,
                format!("the recovery screen with {}", serde_name(&want)),
                format!("the recovery screen with {}", screen.cause.name()),
            )?;
            let changed: Vec<u32> = screen.explanation.pcrs();
            if want == TpmError::PolicyFailed {
                let expected = &expect.changed_pcrs;
                ensure(
                    changed == *expected,
                    format!("changed PCRs {expected:?}"),
                    format!("changed PCRs {changed:?}"),
                )?;
            }
            Ok(Some(*screen))
        }
        (BootOutcome::Unlocked { .. }, false) => Ok(None),
        (outcome @ BootOutcome::WrongPin { .. }, _) => Err((
            format!("recovery: {}", expect.recovery),
            outcome.to_string(),
        )),
        (outcome @ BootOutcome::Recovery(_), false) => {
            Err(("a normal boot".into(), outcome.to_string()))
        }
        (BootOutcome::Unlocked { .. }, true) => Err((
            format!("the recovery screen with {}", serde_name(&expect.tpm_error)),
            "a normal boot".into(),
        )),
    }
}

fn expect_unlocked(outcome: Result<BootOutcome, device::machine::MachineError>) -> StepResult<()> {
    match outcome {
        Ok(BootOutcome::Unlocked { .. }) => Ok(()),
        Ok(other) => Err(("a normal boot".into(), other.to_string())),
        Err(e) => Err(("a normal boot".into(), e.to_string())),
    }
}

fn escrow_key(key: &EscrowedKey) -> EscrowKey {
    EscrowKey::recovery_password(
        &key.volume_id.to_string(),
        &key.key_protector_id.to_string(),
        &key.recovery_password.to_string(),
    )
}

fn random_password(rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn fmt_pcrs(values: &[(u32, Vec<u8>)]) -> String {
    values
        .iter()
        .map(|(p, v)| format!("PCR{p}={}", hex::encode(&v[..8.min(v.len())])))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which of `rows` are the probes' own: for each probe, the last row not yet claimed that
/// asked for what it asked (a probe comes after the story's request for the same key).
fn probe_rows(rows: &[&AuditRow], probes: &[Probe]) -> Vec<bool> {
    let mut probe = vec![false; rows.len()];
    for p in probes {
        let asked = |r: &AuditRow| match p {
            Probe::KeyId(id) => r
                .key_id
                .as_deref()
                .is_some_and(|k| hex_digits(k) == hex_digits(id)),
            Probe::Computer(name) => {
                r.key_id.is_none()
                    && r.device
                        .as_deref()
                        .is_some_and(|d| d.eq_ignore_ascii_case(name))
            }
        };
        if let Some(i) = (0..rows.len()).rev().find(|&i| !probe[i] && asked(rows[i])) {
            probe[i] = true;
        }
    }
    probe
}

/// Whether `stated` is `rows` in order with only probe rows left out.
fn audit_matches<T: PartialEq>(stated: &[T], rows: &[T], probe: &[bool]) -> bool {
    match (stated, rows) {
        (_, []) => stated.is_empty(),
        ([], _) => probe.iter().all(|&p| p),
        ([first, rest @ ..], [row, more @ ..]) => {
            (first == row && audit_matches(rest, more, &probe[1..]))
                || (probe[0] && audit_matches(stated, more, &probe[1..]))
        }
    }
}

/// A key ID as its hex digits, upper case (the portal's rows and the typed IDs differ in
/// braces and dashes).
fn hex_digits(key_id: &str) -> String {
    key_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn failure(step: &str, expected: &str, got: impl std::fmt::Display) -> Failure {
    Failure {
        step: step.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

fn plain(step: &str, expected: &str, got: &str) -> Failure {
    failure(step, expected, got)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A failure names what came in the scenario's words (`several_matches`, `self_service
    /// shown`), not as Rust prints its values (`SeveralMatches([])`, `("self_service", ..)`).
    #[test]
    fn failures_say_what_came_in_the_scenario_s_words() {
        let answer = |outcome| Answer {
            outcome,
            status: 200,
            url: "https://portal.test/SelfService".parse().unwrap(),
            body: String::new(),
        };
        assert_eq!(
            answer_words(&answer(Outcome::SeveralMatches(vec![]))),
            "several_matches (status 200)"
        );
        assert_eq!(
            answer_words(&answer(Outcome::KeyShown("111111-2".into()))),
            "key_shown, the key 111111-2 (status 200)"
        );
        assert_eq!(
            answer_words(&answer(Outcome::NotFound("Not found".into()))),
            "refused: not found (status 200)"
        );
        let rows = [("self_service".to_string(), "shown".to_string())];
        assert_eq!(rows_words(&rows), "self_service shown");
        assert_eq!(rows_words(&[]), "none");
        assert_eq!(button_words(Some("Get Key")), "the button \"Get Key\"");
        assert_eq!(button_words(None), "no Get Key button");
    }

    fn row(key_id: Option<&str>, device: Option<&str>, outcome: &str) -> AuditRow {
        AuditRow {
            id: serde_json::Value::Null,
            time: String::new(),
            source: "self_service".into(),
            requester: None,
            end_user: None,
            device: device.map(str::to_string),
            key_id: key_id.map(str::to_string),
            key_type: None,
            reason: None,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn each_probe_claims_only_its_own_row_the_last_that_asked_for_it() {
        let key = "{1A2B3C4D-0000-1111-2222-333344445555}";
        let rows = [
            row(Some(key), Some("PC-1"), "shown"),
            row(Some("DEADBEEF"), None, "not_found"),
            row(Some("1A2B3C4D"), None, "denied"),
            row(
                Some("1a2b3c4d-0000-1111-2222-333344445555"),
                None,
                "not_found",
            ),
            row(None, Some("PC-00000042"), "not_found"),
        ];
        let probes = [
            Probe::KeyId("DEADBEEF".into()),
            Probe::KeyId("1A2B3C4D-0000-1111-2222-333344445555".into()),
            Probe::Computer("pc-00000042".into()),
        ];
        let rows: Vec<&AuditRow> = rows.iter().collect();
        assert_eq!(probe_rows(&rows, &probes), [false, true, false, true, true]);
    }

    #[test]
    fn the_audit_matches_every_story_row_in_order_with_probe_rows_optional() {
        let rows = ["shown", "not_found", "denied", "not_found"];
        let probe = [false, true, false, true];
        for stated in [
            &["shown", "denied"][..],
            &["shown", "not_found", "denied"],
            &["shown", "not_found", "denied", "not_found"],
        ] {
            assert!(audit_matches(stated, &rows, &probe), "{stated:?}");
        }
        for stated in [
            &["shown"][..],
            &["denied", "not_found"],
            &["shown", "not_found"],
            &["not_found", "not_found"],
            &["shown", "denied", "denied"],
            &[],
        ] {
            assert!(!audit_matches(stated, &rows, &probe), "{stated:?}");
        }
        // A probe row ahead of an equal story row does not take the story row's place.
        assert!(audit_matches(&["x"], &["x", "x"], &[true, false]));
        assert!(!audit_matches(&["x", "y"], &["x", "x"], &[true, false]));
    }
}
