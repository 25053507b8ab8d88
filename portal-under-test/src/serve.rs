//! Binding and serving: HTTPS with a generated (or given) certificate, or plain HTTP; the
//! `PORTAL-READY` information; graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsAcceptor;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde::Serialize;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::Config;
use crate::{app, AppState, InitError};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Init(#[from] InitError),
    // The source is printed by the error chain (`{e:#}`), so not here as well.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("--tls-cert and --tls-key must be given together")]
    TlsPair,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub config: Config,
    pub insecure_http: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// What the `PORTAL-READY` line carries.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    pub url: String,
    pub ca_cert: Option<PathBuf>,
    #[serde(skip)]
    pub addr: SocketAddr,
}

impl Ready {
    /// `PORTAL-READY {"url":...,"ca_cert":...}`
    pub fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        format!("PORTAL-READY {json}")
    }
}

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Generates (first start) or reuses a CA + leaf certificate for `localhost`/`127.0.0.1`.
pub fn ensure_self_signed(dir: &Path) -> Result<TlsFiles, ServeError> {
    let files = TlsFiles {
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
        ca: dir.join("ca-cert.pem"),
    };
    if files.cert.exists() && files.key.exists() && files.ca.exists() {
        return Ok(files);
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portal-under-test local CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    std::fs::write(&files.ca, ca.pem()).map_err(io("writing CA certificate"))?;
    std::fs::write(&files.cert, format!("{}{}", leaf.pem(), ca.pem()))
        .map_err(io("writing certificate"))?;
    write_private(&files.key, leaf_key.serialize_pem().as_bytes())?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io("writing TLS key"))?;
    f.write_all(bytes).map_err(io("writing TLS key"))
}

/// Answers a client that offers at most TLS 1.0 or 1.1 with the fatal `protocol_version`
/// alert (RFC 5246 §7.2.2, RFC 8446 §4.1.2) before rustls sees it. rustls refuses such a
/// client too, but with `handshake_failure`: its hello lacks the `signature_algorithms`
/// extension, which rustls checks before the version. Only the first 11 bytes are read
/// (peeked, so rustls gets the whole hello when it is not refused).
#[derive(Debug, Clone, Copy)]
struct RefuseOldTls;

impl<S: Send + 'static> Accept<TcpStream, S> for RefuseOldTls {
    type Stream = TcpStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<(TcpStream, S)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        Box::pin(async move {
            if offered_version(&stream).await.is_some_and(|v| v < TLS_1_2) {
                // Alert record: level fatal (2), description protocol_version (70).
                let alert = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70];
                let _ = stream.write_all(&alert).await;
                let _ = stream.shutdown().await;
                return Err(std::io::Error::other("client offered only TLS 1.0/1.1"));
            }
            Ok((stream, service))
        })
    }
}

const TLS_1_2: u16 = 0x0303;

/// The `client_version` of a ClientHello (the highest version a TLS 1.2 or older client
/// offers; TLS 1.3 clients put 1.2 there), or None if the first bytes are not a ClientHello.
async fn offered_version(stream: &TcpStream) -> Option<u16> {
    let mut head = [0u8; 11];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut head))
            .await
            .ok()?
            .ok()?;
        // Record type 22 (handshake) whose first message is type 1 (ClientHello).
        if n == 0 || head[0] != 0x16 || (n > 5 && head[5] != 0x01) {
            return None;
        }
        if n >= head.len() {
            return Some(u16::from_be_bytes([head[9], head[10]]));
        }
        // A hello split across segments: wait for the rest of its head.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Opens the data dir, binds, calls `on_ready` once listening, serves until `shutdown`.
pub async fn serve(
    mut opts: ServeOptions,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::create_private_dir(&opts.data_dir)
        .map_err(io(format!("creating {}", opts.data_dir.display())))?;
    let tls = if opts.insecure_http {
        None
    } else {
        match (&opts.tls_cert, &opts.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone(), c.clone())),
            (None, None) => {
                let f = ensure_self_signed(&opts.data_dir)?;
                Some((f.cert, f.key, f.ca))
            }
            _ => return Err(ServeError::TlsPair),
        }
    };
    opts.config.secure_cookies = tls.is_some();
    let dir = opts.data_dir.clone();
    let config = opts.config;
    let state = tokio::task::spawn_blocking(move || AppState::open_data_dir(&dir, config))
        .await
        .map_err(|e| ServeError::Io {
            what: "opening the store".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let router = app(state);

    let listener =
        std::net::TcpListener::bind(opts.listen).map_err(io(format!("binding {}", opts.listen)))?;
    listener.set_nonblocking(true).map_err(io("listener"))?;
    let mut addr = listener.local_addr().map_err(io("listener address"))?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ready = Ready {
        url: format!("{scheme}://{addr}"),
        ca_cert: tls.as_ref().map(|t| absolute(&t.2)),
        addr,
    };
    match tls {
        Some((cert, key, _)) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(io("loading TLS certificate/key"))?;
            let acceptor = RustlsAcceptor::new(cfg).acceptor(RefuseOldTls);
            let server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle);
            on_ready(&ready);
            server
                .serve(router.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .map_err(io("serving"))
        }
        None => {
            let server = axum_server::from_tcp(listener).handle(handle);
            on_ready(&ready);
            server
                .serve(router.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .map_err(io("serving"))
        }
    }
}
