//! One scenario, end to end: a device on its own TPM, the portal over HTTP, the user.

use std::time::Duration;

use rand::Rng;

use crate::bitlocker::{KeyProtectorId, RecoveryPassword};
use crate::device::{Device, Profile};
use crate::machine::{
    BitLockerSetup, BootOutcome, EscrowedKey, LockoutCause, Machine, RecoveryScreen, TpmProtection,
    WINDOWS_DA,
};
use crate::portal::chrome::get_key_label;
use crate::portal::{
    AccountRole, Admin, Agent, Answer, AuditQuery, BrowserUser, ChromeOptions, ChromeUser,
    EscrowKey, HelpDeskOperator, Outcome, PortalTarget, Screenshot, SettingsPatch, SignIn,
};
use crate::scenario::{
    self, AfterRecovery, Answer as Expected, ChangeKind, IdleExpiry, KeyIdDigits, ProtectorKind,
    RecoveryVia, Scenario, TpmError,
};

use super::steps::{because, ensure, Failure, StepResult, Steps};
use super::user::User;
use super::volume_check::{self, JudgedVolume, VolumeJudges};

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
}

/// A user's portal identity in this run: names carry a per-run tag so that scenarios
/// sharing one portal never see each other's accounts or devices.
struct Names {
    tag: String,
}

impl Names {
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
    /// The idle expiry was seen in a browser: its page left for the expiry page before any
    /// key request, so no `expired_session` audit row is expected.
    idle_seen_in_browser: bool,
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
            idle_seen_in_browser: false,
        }
    }

    /// Runs every step; the first failure ends the run.
    pub async fn run(&mut self) -> Result<(), Failure> {
        let s = self.scenario;
        let mut rng = rand::rng();
        let names = Names {
            tag: format!("{:06x}", rng.random::<u32>() & 0xff_ffff),
        };
        let device_name = names.device(&s.device.name);

        // 1. The device: its own swtpm, BitLocker provisioned, a first healthy boot.
        let setup = bitlocker_setup(s)?;
        let device = scenario_device(s)?;
        let pin = s.device.pin.clone();
        let (mut machine, escrow) = self.steps.run("provision BitLocker on a fresh TPM", || {
            Machine::provision(device, &setup, &mut rand::rng())
                .map_err(because("a provisioned device"))
        })?;
        self.steps.note(format!(
            "profile {}, {} recovery password(s), TPM protector {}",
            setup.profile,
            escrow.len(),
            machine.tpm_protector_id()
        ));
        self.steps.run("first boot opens without help", || {
            expect_unlocked(machine.boot(pin.as_deref()))
        })?;

        // 2. The portal: accounts, an enrollment token, the agent's escrow and sign-ins.
        let admin =
            Admin::new(self.target).map_err(|e| failure("connect as admin", "a client", e))?;
        let mut passwords = std::collections::HashMap::new();
        for user in &s.users {
            let password = random_password(&mut rng);
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
        let token = self
            .steps
            .run_async("admin issues an enrollment token", async {
                admin
                    .create_enrollment_token()
                    .await
                    .map_err(because("a token"))
            })
            .await?;
        let agent = self
            .steps
            .run_async("the device's agent enrolls", async {
                Agent::enroll(self.target, &token, &device_name)
                    .await
                    .map_err(because("a device credential"))
            })
            .await?;
        for key in &escrow {
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
        if s.device.escrow_tpm_lockout {
            let auth = machine.lockout_auth().to_vec();
            self.steps
                .run_async("agent escrows the TPM lockout authorization", async {
                    agent
                        .escrow_tpm_lockout(&auth)
                        .await
                        .map_err(because("204"))
                })
                .await?;
        }
        for user in &s.users {
            for kind in &user.sign_ins {
                let name = names.user(&user.name);
                let kind: SignIn = (*kind).into();
                self.steps
                    .run_async(
                        &format!("agent reports a {kind:?} sign-in by {}", user.name)
                            .to_lowercase(),
                        async {
                            agent
                                .report_sign_in(&name, kind)
                                .await
                                .map_err(because("204"))
                        },
                    )
                    .await?;
            }
        }

        // 3. The change, and the boot that must (or must not) end on the recovery screen.
        let screen = self.change_and_boot(&mut machine, pin.as_deref())?;
        let Some(screen) = screen else {
            return self
                .portal_only_checks(&names, &passwords, &machine, &escrow, &agent)
                .await;
        };

        // 4. The user recovers through the portal.
        let Some(recovery) = &s.recovery else {
            return Ok(());
        };
        let requester = recovery.requester.clone();
        let requester_password = passwords
            .get(&requester.to_lowercase())
            .cloned()
            .ok_or_else(|| plain("find the requester", "a user in the scenario", &requester))?;
        let key_id = screen.key_id;
        let typed_id = match recovery.digits() {
            KeyIdDigits::Eight => key_id.first8(),
            KeyIdDigits::ThirtyTwo => key_id.to_string(),
        };

        let got_key: Option<String> = match recovery.via {
            RecoveryVia::SelfService => {
                let username = names.user(&requester);
                let mut user = User::open(
                    self.target,
                    &username,
                    self.browser.as_ref(),
                    recovery.language.map(|l| l.accept_language()),
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
                    .self_service(
                        &mut user,
                        &username,
                        &requester_password,
                        &key_id,
                        &typed_id,
                    )
                    .await;
                if result.is_err() {
                    user.screenshot("failure").await;
                }
                self.screenshots.extend(user.finish().await);
                result?
            }
            RecoveryVia::HelpDesk => {
                let mut operator = self
                    .help_desk_operator(&names.user(&requester), &requester_password)
                    .await?;
                let end_user = recovery.end_user.as_deref().map(|u| names.user(u));
                let mut answer = self
                    .steps
                    .run_async(
                        &format!("operator looks up {} digits of the key ID", typed_id.len()),
                        async {
                            operator
                                .lookup_key(
                                    &typed_id,
                                    end_user.as_deref(),
                                    recovery.reason.as_str(),
                                )
                                .await
                                .map_err(because("an answer page"))
                        },
                    )
                    .await?;
                if let Outcome::SeveralMatches(_) = answer.outcome {
                    let full = key_id.to_string();
                    answer = self
                        .steps
                        .run_async("operator picks the key by all 32 digits", async {
                            operator
                                .lookup_key(&full, end_user.as_deref(), recovery.reason.as_str())
                                .await
                                .map_err(because("an answer page"))
                        })
                        .await?;
                }
                self.expect_simple_answer(recovery.answer, &answer)?
            }
            RecoveryVia::HelpDeskTpmReset => {
                let mut operator = self
                    .help_desk_operator(&names.user(&requester), &requester_password)
                    .await?;
                let end_user = recovery.end_user.as_deref().map(|u| names.user(u));
                let answer = self
                    .steps
                    .run_async(
                        "operator reads the TPM lockout authorization (Manage TPM)",
                        async {
                            operator
                                .manage_tpm(
                                    &device_name,
                                    end_user.as_deref(),
                                    recovery.reason.as_str(),
                                )
                                .await
                                .map_err(because("the Manage TPM answer"))
                        },
                    )
                    .await?;
                let auth_hex = match (&answer.outcome, recovery.answer) {
                    (Outcome::LockoutAuth(hex), Expected::LockoutAuthShown) => hex.clone(),
                    (other, expected) => {
                        return Err(plain(
                            "Manage TPM answer",
                            &format!("{expected:?}"),
                            &format!("{other:?}"),
                        ))
                    }
                };
                let auth = hex::decode(auth_hex.trim()).map_err(|e| {
                    plain("decode the lockout authorization", "hex", &e.to_string())
                })?;
                self.steps
                    .run("the device resets the TPM lockout with it", || {
                        machine
                            .reset_tpm_lockout(&auth)
                            .map_err(because("a lockout reset"))
                    })?;
                self.steps
                    .run("the right PIN unlocks without a recovery key", || {
                        expect_unlocked(machine.boot(pin.as_deref()))
                    })?;
                if s.checks.after_recovery == Some(AfterRecovery::Rotate) {
                    let check_in = self
                        .steps
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
                        .await;
                    check_in?;
                    let new_auth = machine.rotate_lockout_auth(&mut rand::rng()).map_err(|e| {
                        failure("rotate the lockout authorization", "a new value", e)
                    })?;
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
                        .await?;
                }
                None
            }
        };

        // 5. The key typed on the device must unlock it; then the single-use cycle.
        if let Some(password) = got_key {
            let new_pin = pin.clone();
            self.steps
                .run("the key from the portal unlocks the device", || {
                    let recovered = machine
                        .enter_recovery_password(&password, new_pin.as_deref())
                        .map_err(because("a real unlock (VMK unwrap, sector decrypts)"))?;
                    ensure(
                        recovered.via == key_id,
                        key_id.to_string(),
                        recovered.via.to_string(),
                    )
                })?;
            self.steps.run("the next boot opens without recovery", || {
                expect_unlocked(machine.boot(pin.as_deref()))
            })?;
            let volume = JudgedVolume {
                image: machine.volume_image(),
                data_sha256: machine.volume_data_sha256(),
            };
            volume_check::portal_key_opens(
                &mut self.steps,
                self.volume_judges,
                volume,
                key_id,
                &password,
            )?;
            let new = self
                .rotation_cycle(&mut machine, &agent, &names, &passwords, key_id, &password)
                .await?;
            let volume = JudgedVolume {
                image: machine.volume_image(),
                data_sha256: machine.volume_data_sha256(),
            };
            let new_password = new.recovery_password.to_string();
            volume_check::rotation_seen(
                &mut self.steps,
                self.volume_judges,
                volume,
                (key_id, &password),
                (new.key_protector_id, &new_password),
            )?;
        }
        self.portal_only_checks(&names, &passwords, &machine, &escrow, &agent)
            .await
    }

    /// A help desk operator, signed in.
    async fn help_desk_operator(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<HelpDeskOperator, Failure> {
        let mut operator = HelpDeskOperator::new(self.target, username)
            .map_err(|e| failure("open the help desk", "a client", e))?;
        self.steps
            .run_async("help desk operator signs in", async {
                operator
                    .sign_in(username, password)
                    .await
                    .map_err(because("the help desk form"))
            })
            .await?;
        Ok(operator)
    }

    fn change_and_boot(
        &mut self,
        machine: &mut Machine,
        pin: Option<&str>,
    ) -> Result<Option<RecoveryScreen>, Failure> {
        let s = self.scenario;
        let expect = &s.expect;
        if s.change.kind == ChangeKind::None {
            return Ok(None);
        }
        if s.change.kind == ChangeKind::LostPin {
            let wrong = s.change.wrong_pins.unwrap_or(0);
            let threshold = s.device.lockout_threshold;
            for attempt in 1..=wrong {
                let outcome = machine.boot(Some("000000-wrong"));
                let name = format!("wrong PIN #{attempt}");
                self.steps.run(&name, || match outcome {
                    Ok(BootOutcome::WrongPin { lockout_counter }) => ensure(
                        attempt < threshold + 1 && lockout_counter == attempt,
                        format!("TPM_RC_AUTH_FAIL with the lockout counter at {attempt}"),
                        format!("counter {lockout_counter}"),
                    ),
                    Ok(BootOutcome::Recovery(screen)) if attempt > threshold.saturating_sub(1) => {
                        ensure(
                            screen.cause == LockoutCause::LockedOut,
                            "TPM_RC_LOCKOUT once the threshold is reached",
                            screen.cause.name(),
                        )
                    }
                    Ok(other) => Err(("a refused PIN".into(), format!("{other:?}"))),
                    Err(e) => Err(("a refused PIN".into(), e.to_string())),
                })?;
            }
        } else {
            let change = s.change.device_change();
            if let Some(change) = change {
                let predicted = machine.device().clone().with(&change);
                self.steps.run(
                    &format!("apply the change: {}", s.change.kind.as_str()),
                    || {
                        machine
                            .apply(&change)
                            .map_err(because("the change applies"))
                    },
                )?;
                if let Ok(predicted) = predicted {
                    let profile_pcrs: Vec<u8> =
                        machine.profile().pcrs().iter().map(|&p| p as u8).collect();
                    // At the unseal point, in the bank sealed to (a real log may be SHA-1).
                    let boot = predicted.measured_boot();
                    let at_unseal = boot.at_unseal();
                    let predicted_values: Vec<(u8, Vec<u8>)> = profile_pcrs
                        .iter()
                        .filter_map(|&p| {
                            at_unseal
                                .get(boot.bank(), u32::from(p))
                                .map(|v| (p, v.to_vec()))
                        })
                        .collect();
                    self.facts.explanation = Some(format!(
                        "predicted before the change: {}",
                        fmt_pcrs(&predicted_values)
                    ));
                }
            }
        }

        // A lost PIN that has not locked the TPM out: one more wrong PIN, then the user
        // gives up at the prompt (Esc) and takes the recovery screen.
        let gives_up =
            s.change.kind == ChangeKind::LostPin && expect.tpm_error == TpmError::AuthFailed;
        let outcome = if gives_up {
            match machine.boot(Some("000000-wrong")) {
                Ok(BootOutcome::WrongPin { .. }) => machine
                    .choose_recovery_at_pin_prompt()
                    .map(|screen| BootOutcome::Recovery(Box::new(screen))),
                other => other,
            }
        } else {
            machine.boot(pin)
        };
        let step = if gives_up {
            "wrong PIN again, then Esc to the recovery screen"
        } else {
            "boot after the change"
        };
        let screen = self.steps.run(step, || {
            let outcome = outcome.map_err(because("a boot"))?;
            match (outcome, expect.recovery) {
                (BootOutcome::Recovery(screen), true) => {
                    let want = expect.tpm_error;
                    ensure(
                        cause_matches(&screen.cause, want),
                        format!("the recovery screen with {want:?}"),
                        format!("the recovery screen with {}", screen.cause.name()),
                    )?;
                    let changed: Vec<u32> = screen.explanation.pcrs();
                    if want == TpmError::PolicyFailed {
                        let expected: Vec<u32> =
                            expect.changed_pcrs.iter().map(|&p| u32::from(p)).collect();
                        ensure(
                            changed == expected,
                            format!("changed PCRs {expected:?}"),
                            format!("changed PCRs {changed:?}"),
                        )?;
                    }
                    Ok(Some(*screen))
                }
                (BootOutcome::Unlocked { .. }, false) => Ok(None),
                (BootOutcome::WrongPin { lockout_counter }, _) => Err((
                    format!("recovery: {}", expect.recovery),
                    format!("a refused PIN (counter {lockout_counter})"),
                )),
                (BootOutcome::Recovery(screen), false) => Err((
                    "a normal boot".into(),
                    format!(
                        "the recovery screen: {} ({})",
                        screen.cause.name(),
                        screen.explanation
                    ),
                )),
                (BootOutcome::Unlocked { .. }, true) => Err((
                    format!("the recovery screen with {:?}", expect.tpm_error),
                    "a normal boot".into(),
                )),
            }
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
            self.steps.run("the boot after that is normal too", || {
                expect_unlocked(machine.boot(pin))
            })?;
        }
        Ok(screen)
    }

    /// The user's part of a self-service recovery, in whichever client plays it.
    async fn self_service(
        &mut self,
        user: &mut User,
        username: &str,
        password: &str,
        key_id: &KeyProtectorId,
        typed_id: &str,
    ) -> Result<Option<String>, Failure> {
        let s = self.scenario;
        let Some(recovery) = &s.recovery else {
            return Ok(None);
        };
        self.steps
            .run_async("user signs in and accepts the notice", async {
                user.sign_in_and_accept(username, password)
                    .await
                    .map_err(because("the key form"))
            })
            .await?;
        if let (User::Chrome(c), Some(lang)) = (&*user, recovery.language) {
            self.steps
                .run_async(&format!("the pages come in {}", lang.tag()), async {
                    let html_lang = c.page_language().await.map_err(because("<html lang>"))?;
                    let label = c
                        .text_of("get-key")
                        .await
                        .map_err(because("the Get Key button"))?;
                    let want = get_key_label(lang.tag()).unwrap_or_default();
                    ensure(
                        html_lang == lang.tag() && label.as_deref() == Some(want),
                        format!("<html lang=\"{}\"> and the button \"{want}\"", lang.tag()),
                        format!("<html lang=\"{html_lang}\"> and the button {label:?}"),
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
                return self.idle_in_browser(c, idle).await;
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
        self.idle_seen_in_browser = true;
        Ok(None)
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
            self.steps.run("the portal asks for all 32 digits", || {
                match &answer.outcome {
                    Outcome::SeveralMatches(_) => Ok(()),
                    other => Err((
                        "several matches: type all 32 digits".into(),
                        format!("{other:?}"),
                    )),
                }
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
            let absent = KeyProtectorId::random(&mut rand::rng());
            // The same number of digits as the user typed for the real one.
            let typed_absent = if typed_len == 8 {
                absent.first8()
            } else {
                absent.to_string()
            };
            let absent_answer = self
                .steps
                .run_async("user asks for a key ID that does not exist", async {
                    user.request_key(&typed_absent, reason)
                        .await
                        .map_err(because("an answer page"))
                })
                .await?;
            let typed_real = if typed_len == 8 {
                key_id.first8()
            } else {
                key_id.to_string()
            };
            self.steps.run(
                "a foreign key ID is answered exactly like an absent one",
                || {
                    ensure(
                        matches!(answer.outcome, Outcome::NotFound(_))
                            && answer.status == absent_answer.status
                            && same_body(
                                &answer.body,
                                &typed_real,
                                &absent_answer.body,
                                &typed_absent,
                            ),
                        format!(
                            "identical not-found answers (status {})",
                            absent_answer.status
                        ),
                        format!(
                            "{:?} with status {} vs {}",
                            answer.outcome, answer.status, absent_answer.status
                        ),
                    )
                },
            )?;
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
            .run("the portal answers as the scenario says", || {
                match (expected, &answer.outcome) {
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
                    (expected, got) => Err((
                        format!("{expected:?}"),
                        format!("{got:?} (status {})", answer.status),
                    )),
                }
            })
    }

    async fn rotation_cycle(
        &mut self,
        machine: &mut Machine,
        agent: &Agent,
        names: &Names,
        passwords: &std::collections::HashMap<String, String>,
        old_id: KeyProtectorId,
        old_password: &str,
    ) -> Result<EscrowedKey, Failure> {
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
        if let Some(user) = self.scenario.users.iter().find(|u| u.signed_in_locally()) {
            let password = passwords
                .get(&user.name.to_lowercase())
                .cloned()
                .unwrap_or_default();
            let mut browser = BrowserUser::new(self.target, &names.user(&user.name))
                .map_err(|e| failure("open the portal", "a client", e))?;
            self.steps
                .run_async("the portal no longer offers the old key", async {
                    browser
                        .sign_in_and_accept(&names.user(&user.name), &password)
                        .await
                        .map_err(because("the key form"))?;
                    let a = browser
                        .request_key(&old, "BIOS/TPM changed")
                        .await
                        .map_err(because("an answer page"))?;
                    ensure(
                        matches!(a.outcome, Outcome::NotFound(_)),
                        "not found",
                        format!("{:?}", a.outcome),
                    )
                })
                .await?;
        }
        Ok(new)
    }

    async fn portal_only_checks(
        &mut self,
        names: &Names,
        passwords: &std::collections::HashMap<String, String>,
        machine: &Machine,
        escrow: &[EscrowedKey],
        _agent: &Agent,
    ) -> Result<(), Failure> {
        let s = self.scenario;
        if let Some(foreign) = &s.checks.foreign_key_request {
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
        }
        if !s.checks.audit.is_empty() {
            let admin =
                Admin::new(self.target).map_err(|e| failure("connect as admin", "a client", e))?;
            let device = names.device(&s.device.name);
            let users: Vec<String> = s.users.iter().map(|u| names.user(&u.name)).collect();
            let mut expected = s.checks.audit.clone();
            if self.idle_seen_in_browser {
                // In a browser the page leaves for the expiry page by itself; no key request
                // reaches the expired session, so there is no `expired_session` row.
                expected.retain(|e| snake(&format!("{:?}", e.outcome)) != "expired_session");
            }
            self.steps
                .run_async("the audit shows each request", async {
                    let rows = admin
                        .audit(&AuditQuery::default())
                        .await
                        .map_err(because("audit rows"))?;
                    let mine: Vec<(String, String)> = rows
                        .iter()
                        .filter(|r| {
                            r.device
                                .as_deref()
                                .is_some_and(|d| d.eq_ignore_ascii_case(&device))
                                || r.requester.as_deref().is_some_and(|q| {
                                    users.iter().any(|u| u.eq_ignore_ascii_case(q))
                                })
                                || r.end_user.as_deref().is_some_and(|q| {
                                    users.iter().any(|u| u.eq_ignore_ascii_case(q))
                                })
                        })
                        .map(|r| (r.source.clone(), r.outcome.clone()))
                        .collect();
                    let want: Vec<(String, String)> = expected
                        .iter()
                        .map(|e| {
                            (
                                snake(&format!("{:?}", e.source)),
                                snake(&format!("{:?}", e.outcome)),
                            )
                        })
                        .collect();
                    let mut it = mine.iter();
                    let all_found = want.iter().all(|w| it.any(|m| m == w));
                    ensure(
                        all_found,
                        format!("{want:?} in this order"),
                        format!("{mine:?}"),
                    )
                })
                .await?;
        }
        Ok(())
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

/// How the runner sets BitLocker up for a scenario (profile, TPM or TPM+PIN, recovery
/// passwords, dictionary-attack threshold).
pub fn bitlocker_setup(s: &Scenario) -> Result<BitLockerSetup, Failure> {
    let protection = if s.device.protectors.contains(&ProtectorKind::TpmPin) {
        TpmProtection::TpmPin {
            pin: s.device.pin.clone().unwrap_or_default(),
        }
    } else {
        TpmProtection::Tpm
    };
    let key_id_prefix = match &s.device.key_id_prefix {
        Some(hex) => Some(
            u32::from_str_radix(hex, 16)
                .map_err(|e| plain("read key_id_prefix", "8 hex digits", &format!("{hex}: {e}")))?,
        ),
        None => None,
    };
    Ok(BitLockerSetup {
        profile: match s.device.profile {
            scenario::Profile::SecureBoot => Profile::SecureBoot7_11,
            scenario::Profile::Uefi => Profile::Uefi0_2_4_11,
            scenario::Profile::Legacy => Profile::Legacy,
        },
        protection,
        recovery_passwords: usize::from(s.device.recovery_passwords.max(1)),
        key_id_prefix,
        dictionary_attack: swtpm::DaParameters {
            max_tries: s.device.lockout_threshold,
            ..WINDOWS_DA
        },
    })
}

/// The synthetic model for the scenario's profile (a BIOS machine for `legacy`, UEFI with
/// Secure Boot otherwise), or a device booting the scenario's real log (read by the loader).
pub fn scenario_device(s: &Scenario) -> Result<Device, Failure> {
    match (&s.device.event_log, &s.device.real_log) {
        (None, _) => Ok(match s.device.profile {
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

fn cause_matches(cause: &LockoutCause, want: TpmError) -> bool {
    matches!(
        (cause, want),
        (LockoutCause::PolicyFailed, TpmError::PolicyFailed)
            | (LockoutCause::LockedOut, TpmError::LockedOut)
            | (LockoutCause::AuthFailed, TpmError::AuthFailed)
            | (LockoutCause::Integrity, TpmError::Integrity)
    )
}

fn expect_unlocked(outcome: Result<BootOutcome, crate::machine::MachineError>) -> StepResult<()> {
    match outcome {
        Ok(BootOutcome::Unlocked { .. }) => Ok(()),
        Ok(BootOutcome::Recovery(screen)) => Err((
            "a normal boot".into(),
            format!(
                "the recovery screen: {} ({})",
                screen.cause.name(),
                screen.explanation
            ),
        )),
        Ok(other) => Err(("a normal boot".into(), format!("{other:?}"))),
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

fn fmt_pcrs(values: &[(u8, Vec<u8>)]) -> String {
    values
        .iter()
        .map(|(p, v)| format!("PCR{p}={}", hex::encode(&v[..8.min(v.len())])))
        .collect::<Vec<_>>()
        .join(" ")
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
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
