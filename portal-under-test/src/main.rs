//! `portal-under-test`: serve, bootstrap an admin, import keys. See API.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use portal_under_test::config::Config;
use portal_under_test::crypto::{random_token, token_hash, PasswordHashing, Sealer};
use portal_under_test::serve::{serve, ServeOptions};
use portal_under_test::store::Role;

#[derive(Parser)]
#[command(
    name = "portal-under-test",
    about = "BitLocker self-service recovery portal (the system under test)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the portal.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// Keep the store in this PostgreSQL database (`postgres://user@host:port/db`)
        /// instead of `DATA_DIR/portal.sqlite3`. The data dir still holds the key file.
        #[arg(long, env = "PORTAL_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        insecure_http: bool,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Bulk-load a JSON Lines file of escrow records.
    Import {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Keep the store in this PostgreSQL database (`postgres://user@host:port/db`)
        /// instead of `DATA_DIR/portal.sqlite3`. The data dir still holds the key file.
        #[arg(long, env = "PORTAL_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create the store and an admin account if missing; print a fresh admin API token.
    Bootstrap {
        #[arg(long)]
        data_dir: PathBuf,
        /// Keep the store in this PostgreSQL database (`postgres://user@host:port/db`)
        /// instead of `DATA_DIR/portal.sqlite3`. The data dir still holds the key file.
        #[arg(long, env = "PORTAL_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, default_value = "admin")]
        username: String,
    },
}

fn main() {
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A log line that cannot be written (the log's disk is full) is dropped: by default
        // the subscriber reports it with `eprintln!`, which panics when stderr fails too.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            data_dir,
            database_url,
            listen,
            config,
            insecure_http,
            tls_cert,
            tls_key,
        } => {
            let mut config = match config {
                Some(p) => Config::from_file(&p)?,
                None => Config::default(),
            };
            if database_url.is_some() {
                config.database_url = database_url;
            }
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async move {
                let opts = ServeOptions {
                    data_dir,
                    listen,
                    config,
                    insecure_http,
                    tls_cert,
                    tls_key,
                };
                serve(
                    opts,
                    |ready| {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{}", ready.line());
                        let _ = out.flush();
                        tracing::info!(url = %ready.url, "listening");
                    },
                    shutdown_signal(),
                )
                .await
            })?;
            Ok(())
        }
        Cmd::Admin {
            cmd:
                AdminCmd::Bootstrap {
                    data_dir,
                    database_url,
                    username,
                },
        } => {
            let store = portal_under_test::open_store(&data_dir, database_url.as_deref())?;
            Sealer::load_or_create(&data_dir.join("portal.key"))?;
            let admin = match store.first_admin()? {
                Some(a) => a,
                None => {
                    let hasher = PasswordHashing::new(Default::default())?;
                    let hash = hasher.hash(&random_token("pw"))?;
                    store.create_account(&username, &hash, Role::Admin)?
                }
            };
            let token = random_token("api");
            store.add_api_token(admin.id, &token_hash(&token))?;
            println!("{token}");
            Ok(())
        }
        Cmd::Import {
            file,
            data_dir,
            database_url,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let store = portal_under_test::open_store(&data_dir, database_url.as_deref())?;
            let sealer = Sealer::load_or_create(&data_dir.join("portal.key"))?;
            let t = std::time::Instant::now();
            let created = portal_under_test::import::import_jsonl(&text, &sealer, store.as_ref())?;
            tracing::info!(
                records = created.len(),
                secs = t.elapsed().as_secs_f64(),
                "import done"
            );
            println!("imported {} records", created.len());
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[allow(dead_code)]
fn _unused() -> anyhow::Result<()> {
    bail!("unreachable")
}
