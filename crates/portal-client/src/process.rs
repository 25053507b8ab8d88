//! The embedded default: a portal *binary* started on a free port with a throw-away data
//! directory, found next to the harness, stopped on drop. It is driven exactly like a
//! portal at a URL; only its lifetime is ours.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::PortalError;
use super::http::client;
use super::{PortalTarget, Result};

/// The binary's file name.
pub const PORTAL_BIN_NAME: &str = "portal-under-test";
/// The line the portal prints when it listens (API.md §1).
const READY_PREFIX: &str = "PORTAL-READY ";

/// How to start the embedded portal.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Written to a file and passed as `--config` (API.md §1); `None` passes none.
    pub config: Option<serde_json::Value>,
    /// `--insecure-http` instead of the generated TLS certificate.
    pub insecure_http: bool,
    /// Extra environment, e.g. `FAILPOINTS` for a build with fault points.
    pub env: Vec<(String, String)>,
    /// Deadline for `admin bootstrap`, the ready line, and `/healthz` each.
    pub ready_timeout: Duration,
    /// `--database-url`: the store in this PostgreSQL database instead of SQLite in the data
    /// directory (required for [`EmbeddedReplicas`] of more than one).
    pub database_url: Option<String>,
}

impl Default for EmbeddedOptions {
    /// Cheap argon2 (the accounts are throw-away; production costs would make every sign-in
    /// in a test take tens of milliseconds), TLS on, 30 s deadlines.
    fn default() -> Self {
        EmbeddedOptions {
            config: Some(serde_json::json!({
                "argon2": { "m_cost_kib": 64, "t_cost": 1, "p_cost": 1 }
            })),
            insecure_http: false,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            database_url: None,
        }
    }
}

/// A running portal process, killed and reaped on drop; the kernel kills it too if the
/// harness dies first (`PR_SET_PDEATHSIG`).
#[derive(Debug)]
pub struct EmbeddedPortal {
    child: Child,
    target: PortalTarget,
    // Dropped after the child is killed (field order and `Drop`): the portal never sees
    // its directory vanish.
    work_dir: tempfile::TempDir,
}

#[derive(Deserialize)]
struct Ready {
    url: String,
    ca_cert: Option<PathBuf>,
}

impl EmbeddedPortal {
    /// Starts `portal_bin` with [`EmbeddedOptions::default`].
    pub async fn start(portal_bin: &Path) -> Result<EmbeddedPortal> {
        EmbeddedPortal::start_with(portal_bin, &EmbeddedOptions::default()).await
    }

    /// `admin bootstrap` for a token, then `serve` on `127.0.0.1:0`; returns once the
    /// portal printed its ready line and `/healthz` answers `ok`.
    pub async fn start_with(
        portal_bin: &Path,
        options: &EmbeddedOptions,
    ) -> Result<EmbeddedPortal> {
        let work_dir = tempfile::Builder::new()
            .prefix("portal-")
            .tempdir()
            .map_err(|e| start_error("create a data directory", e.to_string()))?;
        let data_dir = work_dir.path().join("data");
        let admin_token = bootstrap(portal_bin, &data_dir, options).await?;
        EmbeddedPortal::serve(portal_bin, work_dir, &data_dir, admin_token, options).await
    }

    /// Another `serve` process on this portal's data directory and database (a replica:
    /// API.md §1 "Replicas"); its own work directory holds its config and stderr log.
    pub async fn start_replica(
        &self,
        portal_bin: &Path,
        options: &EmbeddedOptions,
    ) -> Result<EmbeddedPortal> {
        let work_dir = tempfile::Builder::new()
            .prefix("portal-replica-")
            .tempdir()
            .map_err(|e| start_error("create a work directory", e.to_string()))?;
        let admin_token = self.target.admin_token.clone();
        EmbeddedPortal::serve(portal_bin, work_dir, &self.data_dir(), admin_token, options).await
    }

    /// `serve` on `data_dir` (already bootstrapped) on `127.0.0.1:0`; returns once the
    /// portal printed its ready line and `/healthz` answers `ok`.
    async fn serve(
        portal_bin: &Path,
        work_dir: tempfile::TempDir,
        data_dir: &Path,
        admin_token: String,
        options: &EmbeddedOptions,
    ) -> Result<EmbeddedPortal> {
        let mut cmd = Command::new(portal_bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0");
        if let Some(url) = &options.database_url {
            cmd.arg("--database-url").arg(url);
        }
        if let Some(config) = &options.config {
            let path = work_dir.path().join("config.json");
            std::fs::write(&path, config.to_string())
                .map_err(|e| start_error("write the config file", e.to_string()))?;
            cmd.arg("--config").arg(path);
        }
        if options.insecure_http {
            cmd.arg("--insecure-http");
        }
        let stderr_log = std::fs::File::create(work_dir.path().join("stderr.log"))
            .map_err(|e| start_error("create the stderr log", e.to_string()))?;
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // A file, not a pipe: nobody has to drain it, and it is there to quote.
            .stderr(Stdio::from(stderr_log));
        let mut child = spawn_with_death_signal(cmd, portal_bin)?;
        let ready_line = read_ready_line(&mut child, options.ready_timeout);
        let mut portal = EmbeddedPortal {
            child,
            target: PortalTarget {
                url: reqwest::Url::parse("http://127.0.0.1/")
                    .map_err(|e| start_error("url", e.to_string()))?,
                ca_cert: None,
                admin_token,
                replicas: Vec::new(),
            },
            work_dir,
        };
        let ready = match ready_line.await {
            Ok(line) => line,
            Err(detail) => return Err(portal.failed("read the PORTAL-READY line", &detail)),
        };
        let ready: Ready = match serde_json::from_str(&ready) {
            Ok(r) => r,
            Err(e) => {
                return Err(portal.failed("parse the PORTAL-READY line", &format!("{e}: {ready}")))
            }
        };
        portal.target.url = match reqwest::Url::parse(&ready.url) {
            Ok(url) => url,
            Err(e) => {
                return Err(portal.failed("parse the ready URL", &format!("{e}: {}", ready.url)))
            }
        };
        portal.target.ca_cert = ready.ca_cert;
        portal.wait_healthy(options.ready_timeout).await?;
        Ok(portal)
    }

    /// URL, certificate and admin token.
    pub fn target(&self) -> &PortalTarget {
        &self.target
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The portal's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.work_dir.path().join("data")
    }

    /// The last `lines` lines the portal wrote on stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let log =
            std::fs::read_to_string(self.work_dir.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the portal now (same as dropping it).
    pub fn stop(self) {}

    fn kill(&mut self) {
        // Errors mean it already exited; `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the portal and describes why it did not start, quoting its stderr.
    fn failed(&mut self, step: &str, detail: &str) -> PortalError {
        let exited = match self.exit_status_soon() {
            Some(status) => format!(" (the portal exited: {status})"),
            None => String::new(),
        };
        self.kill();
        start_error(
            step,
            format!("{detail}{exited}; stderr tail:\n{}", self.stderr_tail(20)),
        )
    }

    /// The exit status, waiting a moment for it: a portal that closed its stdout is
    /// usually exiting. Only on the failure path, so the short block does not matter.
    fn exit_status_soon(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let http = match client(&self.target, false) {
            Ok(http) => http,
            Err(e) => return Err(self.failed("build a client for /healthz", &e.to_string())),
        };
        let url = match self.target.url.join("/healthz") {
            Ok(url) => url,
            Err(e) => return Err(self.failed("build the /healthz URL", &e.to_string())),
        };
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < timeout {
            if !self.is_running() {
                return Err(self.failed("GET /healthz", "the portal stopped"));
            }
            match http.get(url.clone()).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    if status == 200 && body.trim() == "ok" {
                        return Ok(());
                    }
                    last = format!("status {status}: {}", super::error::excerpt(&body));
                }
                Err(e) => last = format!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.failed(
            "GET /healthz",
            &format!("not healthy within {timeout:?}: {last}"),
        ))
    }
}

/// N embedded portal processes on one PostgreSQL database and one data directory (the
/// first bootstraps it); each stopped on drop.
#[derive(Debug)]
pub struct EmbeddedReplicas {
    pub replicas: Vec<EmbeddedPortal>,
    target: PortalTarget,
}

impl EmbeddedReplicas {
    /// Starts `n` (at least 1) replicas; more than one needs `options.database_url`.
    pub async fn start(
        portal_bin: &Path,
        n: usize,
        options: &EmbeddedOptions,
    ) -> Result<EmbeddedReplicas> {
        if n > 1 && options.database_url.is_none() {
            return Err(start_error(
                "start replicas",
                "several replicas need a PostgreSQL database (--database-url): \
                 SQLite serves one process"
                    .into(),
            ));
        }
        let first = EmbeddedPortal::start_with(portal_bin, options).await?;
        let mut target = first.target().clone();
        let mut replicas = vec![first];
        for _ in 1..n.max(1) {
            let replica = replicas[0].start_replica(portal_bin, options).await?;
            replicas.push(replica);
        }
        if n > 1 {
            target.replicas = replicas.iter().map(|r| r.target().url.clone()).collect();
        }
        Ok(EmbeddedReplicas { replicas, target })
    }

    /// The first replica's URL, certificate and admin token, and every replica's URL.
    pub fn target(&self) -> &PortalTarget {
        &self.target
    }
}

impl Drop for EmbeddedPortal {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_error(step: &str, detail: String) -> PortalError {
    PortalError::Start {
        step: step.to_string(),
        detail,
    }
}

/// `admin bootstrap`: creates the store and prints an admin API token. Supervised as
/// `serve` is: a harness killed meanwhile must not leave it running.
async fn bootstrap(bin: &Path, data_dir: &Path, options: &EmbeddedOptions) -> Result<String> {
    let step = "run `admin bootstrap`";
    let mut cmd = Command::new(bin);
    cmd.arg("admin")
        .arg("bootstrap")
        .arg("--data-dir")
        .arg(data_dir)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(url) = &options.database_url {
        cmd.arg("--database-url").arg(url);
    }
    let timeout = options.ready_timeout;
    let output = tokio::task::spawn_blocking(move || supervise::output_supervised(cmd, timeout))
        .await
        .map_err(|e| start_error(step, e.to_string()))?
        .map_err(|e| start_error(step, format!("cannot run {}: {e}", bin.display())))?
        .ok_or_else(|| start_error(step, format!("no answer within {timeout:?}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let token = stdout.trim();
    if !output.status.success() || token.is_empty() || token.lines().count() != 1 {
        return Err(start_error(
            step,
            format!(
                "{} (stdout: {:?}); stderr: {}",
                output.status,
                super::error::excerpt(&stdout),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(token.to_string())
}

/// Reads stdout on a thread until the ready line (then keeps draining it, so the portal
/// never blocks on a full pipe); the future resolves to the line's JSON or a reason.
fn read_ready_line(
    child: &mut Child,
    timeout: Duration,
) -> impl std::future::Future<Output = std::result::Result<String, String>> {
    let (tx, rx) = tokio::sync::oneshot::channel::<std::result::Result<String, String>>();
    let stdout = child.stdout.take();
    let spawned = thread::Builder::new()
        .name("portal-stdout".to_string())
        .spawn(move || {
            let Some(stdout) = stdout else {
                let _ = tx.send(Err("no stdout pipe".to_string()));
                return;
            };
            let mut tx = Some(tx);
            let mut others = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match (line.strip_prefix(READY_PREFIX), tx.take()) {
                    (Some(json), Some(sender)) => {
                        let _ = sender.send(Ok(json.to_string()));
                    }
                    (_, sender) => {
                        if sender.is_some() && others.len() < 5 {
                            others.push(line);
                        }
                        tx = sender;
                    }
                }
            }
            if let Some(sender) = tx {
                let _ = sender.send(Err(format!(
                    "stdout closed before the PORTAL-READY line (other stdout lines: {others:?})"
                )));
            }
        });
    async move {
        if let Err(e) = spawned {
            return Err(format!("cannot start the stdout reader thread: {e}"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the stdout reader stopped".to_string()),
            Err(_) => Err(format!("no PORTAL-READY line within {timeout:?}")),
        }
    }
}

/// Finds the portal binary: `explicit` if given (it must exist), else next to the current
/// executable, or one directory up (test binaries live in `target/<profile>/deps`).
pub fn find_portal_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(PortalError::BinaryNotFound(format!(
            "{} (given with --portal-bin) is not a file",
            path.display()
        )));
    }
    let exe = std::env::current_exe().map_err(|e| {
        PortalError::BinaryNotFound(format!("cannot tell where the harness runs from: {e}"))
    })?;
    let mut looked = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(PORTAL_BIN_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
        dir = d.parent();
    }
    Err(PortalError::BinaryNotFound(format!(
        "looked at {}; build it with `cargo build -p portal-under-test` or pass --portal-bin",
        looked.join(" and ")
    )))
}

/// Spawns the portal so that it dies with the harness (`supervise::spawn_supervised`).
fn spawn_with_death_signal(cmd: Command, bin: &Path) -> Result<Child> {
    supervise::spawn_supervised(cmd).map_err(|e| {
        start_error(
            "spawn `serve`",
            format!("cannot execute {}: {e}", bin.display()),
        )
    })
}
