//! Which portal a command plays against: `--portal-url` (repeatable), or the embedded
//! portal this process starts (on SQLite, or PostgreSQL with `--database-url`). Shared by
//! `harness run` and `harness fleet`.

use std::path::PathBuf;

use clap::Args;
use portal_client::{find_portal_bin, EmbeddedOptions, EmbeddedReplicas, PortalTarget};

use super::CliError;

/// The portal options of `harness run` and `harness fleet`.
#[derive(Debug, Args)]
pub struct PortalArgs {
    /// Play against a running portal at this URL instead of starting the embedded one.
    /// Repeat it for several replicas of one portal on one database: each actor is pinned to
    /// one replica (the admin and the device agent to the first, the self-service user to the
    /// second, the help desk to the last), so keys are escrowed through one and recovered
    /// through another (README "Replicas").
    #[arg(long, value_name = "URL", requires = "admin_token")]
    pub portal_url: Vec<String>,
    /// PEM certificate to trust for `--portal-url` (its self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "portal_url")]
    pub portal_ca: Option<PathBuf>,
    /// Admin API token of the portal at `--portal-url`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HARNESS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The portal binary to start (default: `portal-under-test` next to this program). It
    /// inherits this process's environment (`FAILPOINTS` for a build with fault points).
    #[arg(long, value_name = "PATH", conflicts_with = "portal_url")]
    pub portal_bin: Option<PathBuf>,
    /// Start this many embedded portal processes on one database (`--database-url`) and one
    /// data directory, and spread the actors over them as for repeated `--portal-url`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        conflicts_with = "portal_url"
    )]
    pub embedded_replicas: usize,
    /// The embedded portal's store: this PostgreSQL database (`postgres://…`; required
    /// with `--embedded-replicas` above 1) instead of SQLite in its data directory.
    #[arg(long, value_name = "URL", conflicts_with = "portal_url")]
    pub database_url: Option<String>,
}

impl PortalArgs {
    /// The target to play against, and the embedded portal when this process started one
    /// (it lives as long as the returned value: dropped, it is killed and reaped). A
    /// `--portal-url` target must answer the admin API first.
    pub fn start(
        &self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(PortalTarget, Option<EmbeddedReplicas>), CliError> {
        if self.portal_url.is_empty() {
            if self.embedded_replicas == 0 {
                return Err(CliError::Usage("--embedded-replicas: at least 1".into()));
            }
            if self.embedded_replicas > 1 && self.database_url.is_none() {
                return Err(CliError::Usage(
                    "--embedded-replicas above 1 needs --database-url (a PostgreSQL database: \
                     SQLite serves one process)"
                        .into(),
                ));
            }
            let bin = find_portal_bin(self.portal_bin.as_deref())?;
            let options = EmbeddedOptions {
                database_url: self.database_url.clone(),
                ..EmbeddedOptions::default()
            };
            let portal = runtime.block_on(EmbeddedReplicas::start(
                &bin,
                self.embedded_replicas,
                &options,
            ))?;
            return Ok((portal.target().clone(), Some(portal)));
        }
        let replicas = self
            .portal_url
            .iter()
            .map(|url| {
                reqwest::Url::parse(url)
                    .map_err(|e| CliError::Usage(format!("--portal-url {url:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let target = PortalTarget {
            url: replicas[0].clone(),
            replicas: if replicas.len() > 1 {
                replicas
            } else {
                Vec::new()
            },
            ca_cert: self.portal_ca.clone(),
            admin_token: self.admin_token.clone().unwrap_or_default(),
        };
        runtime.block_on(check_reachable(&target))?;
        Ok((target, None))
    }
}

/// Every replica answers the admin API.
async fn check_reachable(target: &PortalTarget) -> Result<(), CliError> {
    let urls = if target.replicas.is_empty() {
        vec![target.url.clone()]
    } else {
        target.replicas.clone()
    };
    for url in urls {
        let one = PortalTarget {
            url,
            replicas: Vec::new(),
            ..target.clone()
        };
        portal_client::Admin::new(&one)?.settings().await?;
    }
    Ok(())
}
