//! Property: whatever agents report and users ask, self-service never shows a user a key of
//! a device they never signed in to locally.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use proptest::prelude::*;

use crate::common::{Key, Portal};

const USERS: [&str; 2] = ["CONTOSO\\u0", "CONTOSO\\u1"];
const DEVICES: usize = 3;

#[derive(Debug, Clone)]
enum Action {
    SignIn {
        user: usize,
        device: usize,
        local: bool,
    },
    Lookup {
        user: usize,
        device: usize,
        full: bool,
    },
    Rotate {
        device: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0..USERS.len(), 0..DEVICES, any::<bool>()).prop_map(|(user, device, local)| {
            Action::SignIn {
                user,
                device,
                local,
            }
        }),
        (0..USERS.len(), 0..DEVICES, any::<bool>())
            .prop_map(|(user, device, full)| Action::Lookup { user, device, full }),
        (0..DEVICES).prop_map(|device| Action::Rotate { device }),
    ]
}

async fn run(actions: Vec<Action>, shared_prefix: bool) -> Result<(), TestCaseError> {
    let p = Portal::new();
    p.settings(serde_json::json!({"lookup_failure_limit": 1_000_000}))
        .await;
    let mut creds = Vec::new();
    let mut current: Vec<Key> = Vec::new();
    for d in 0..DEVICES {
        let c = p.enroll(&format!("PC-{d}")).await;
        // Shared prefixes make 8-digit lookups match several devices.
        let k = if shared_prefix {
            Key::with_prefix(0x5EED0000)
        } else {
            Key::random()
        };
        p.escrow(&c, &k).await;
        creds.push(c);
        current.push(k);
    }
    let mut browsers = Vec::new();
    for u in USERS {
        p.create_account(u, "user").await;
        let mut b = p.browser();
        b.self_service(u).await;
        browsers.push(b);
    }
    // Every password ever escrowed, by device.
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (d, k) in current.iter().enumerate() {
        owner.insert(k.password.clone(), d);
    }
    let mut local: HashSet<(usize, usize)> = HashSet::new();
    for a in actions {
        match a {
            Action::SignIn {
                user,
                device,
                local: is_local,
            } => {
                p.sign_in(
                    &creds[device],
                    USERS[user],
                    if is_local { "local" } else { "remote" },
                )
                .await;
                if is_local {
                    local.insert((user, device));
                }
            }
            Action::Rotate { device } => {
                let new = if shared_prefix {
                    Key::with_prefix(0x5EED0000)
                } else {
                    Key::random()
                };
                p.escrow(&creds[device], &new).await;
                let rot = serde_json::json!({"old_key_protector_id": current[device].guid(), "new_key_protector_id": new.guid()});
                let (s, _) = p
                    .json(
                        axum::http::Method::POST,
                        "/api/agent/rotations",
                        Some(&creds[device]),
                        Some(rot),
                    )
                    .await;
                prop_assert_eq!(s, StatusCode::OK);
                owner.insert(new.password.clone(), device);
                current[device] = new;
            }
            Action::Lookup { user, device, full } => {
                let k = &current[device];
                let id = if full { k.guid() } else { k.prefix8() };
                let page = browsers[user].get_key(&id, "BIOS/TPM changed").await;
                if let Some(shown) = page.text_of("recovery-password") {
                    let d = owner.get(&shown).copied();
                    prop_assert!(d.is_some(), "shown key is one that was escrowed");
                    let d = d.unwrap_or_default();
                    prop_assert!(
                        local.contains(&(user, d)),
                        "user {} got a key of PC-{} without a local sign-in",
                        user,
                        d
                    );
                    prop_assert_eq!(
                        &shown,
                        &current[d].password,
                        "superseded keys are never shown"
                    );
                } else if full && local.contains(&(user, device)) {
                    prop_assert!(
                        false,
                        "an eligible full key ID must be shown: {}",
                        page.status
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn no_key_without_a_local_sign_in(actions in proptest::collection::vec(action(), 1..25), shared in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(actions, shared))?;
    }
}
