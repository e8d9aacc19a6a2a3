//! Ordinary (non-replication) connections to the source database, and the TLS settings
//! that both these and the replication connection take from `source.url`.
//!
//! Every session runs with `TimeZone = UTC` so that timestamps mean the same to every
//! reader, with fixed text formats and without the database's timeouts
//! ([`SESSION_OPTIONS`]), and names itself `leadsync` in `pg_stat_activity`. Errors name the server and
//! database, never the password.
//!
//! TLS follows libpq: `sslmode` (`disable`, `prefer` — the default —, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or `system` for the bundled
//! Mozilla roots), `sslcert` and `sslkey` (a client certificate), given as parameters of
//! `source.url` or, when the URL does not set them, as the environment variables
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{Client, NoTls};

/// How long a connection attempt may take before it is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection parameters leadsync reads itself; `tokio_postgres` knows only the first
/// three `sslmode` values and none of the others.
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("source.url is not a PostgreSQL connection URL: {0}")]
    BadUrl(String),
    #[error("source.url: {0}")]
    TlsSettings(String),
    #[error(
        "cannot connect to {target}: {cause}. Check that the server is running and reachable \
         and that source.url is right"
    )]
    Unreachable { target: String, cause: String },
    /// The server answered and said no: a password, a role, a database or a `pg_hba.conf`
    /// line that no retry changes.
    #[error(
        "the server at {target} refused leadsync: {cause}. Check the role and its password \
         (source.url, source.password_file), the database's name and the role's pg_hba.conf \
         line"
    )]
    Refused { target: String, cause: String },
    #[error("TLS connection to {target} failed: {cause}{}", hint_suffix(.hint))]
    Tls {
        target: String,
        cause: String,
        hint: Option<String>,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(". {h}")).unwrap_or_default()
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, without checking its certificate; plain otherwise.
    Prefer,
    /// TLS always; the certificate is checked only when a root certificate file is there
    /// (as libpq does, which then behaves as `verify-ca`).
    Require,
    /// TLS, and the server's certificate must be issued by a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, ConnectError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnectError::TlsSettings(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )));
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla root set bundled with leadsync.
    System,
}

/// The TLS settings of `source.url`, resolved as libpq resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            client_key: None,
        }
    }
}

impl TlsOptions {
    /// Whether the server's certificate chain is checked against the roots.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }

    /// Whether the certificate must name the host.
    pub fn verifies_host(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }

    /// The roots, for messages.
    pub fn describe_roots(&self) -> String {
        match &self.root_cert {
            Some(RootCert::File(path)) => format!("sslrootcert `{}`", path.display()),
            Some(RootCert::System) => "the system's trusted roots (sslrootcert=system)".into(),
            None => "no root certificate".into(),
        }
    }

    /// Resolves the parameters found in the URL, falling back on the `PGSSL*` variables
    /// of `env` and libpq's default root certificate `~/.postgresql/root.crt` under `home`.
    fn resolve(
        params: &[(String, String)],
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<TlsOptions, ConnectError> {
        let get = |name: &str, var: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };
        let mode = match get("sslmode", "PGSSLMODE") {
            Some(text) => SslMode::parse(&text)?,
            None => SslMode::Prefer,
        };
        let explicit_root = get("sslrootcert", "PGSSLROOTCERT");
        let client_cert = get("sslcert", "PGSSLCERT").map(PathBuf::from);
        let client_key = get("sslkey", "PGSSLKEY").map(PathBuf::from);
        if client_cert.is_some() != client_key.is_some() {
            return Err(ConnectError::TlsSettings(
                "a client certificate needs both sslcert and sslkey".into(),
            ));
        }
        let root_cert = match explicit_root.as_deref() {
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
            None => home
                .map(|h| h.join(".postgresql").join("root.crt"))
                .filter(|p| p.is_file())
                .map(RootCert::File),
        };
        let options = TlsOptions {
            mode,
            root_cert,
            client_cert,
            client_key,
        };
        if options.root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(ConnectError::TlsSettings(format!(
                "sslrootcert=system trusts every public certificate authority, so it needs \
                 sslmode=verify-full (got sslmode={})",
                mode.as_str()
            )));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && options.root_cert.is_none() {
            return Err(ConnectError::TlsSettings(format!(
                "sslmode={} checks the server's certificate, but there is no root certificate \
                 to check it against: add sslrootcert=/path/to/ca.pem to source.url (or \
                 sslrootcert=system for the public certificate authorities)",
                mode.as_str()
            )));
        }
        Ok(options)
    }
}

/// `source.url` taken apart: the connection settings and the TLS settings.
#[derive(Debug, Clone)]
pub struct SourceUrl {
    pub config: tokio_postgres::Config,
    pub tls: TlsOptions,
}

impl SourceUrl {
    /// Whether every host is this machine: a Unix socket, `localhost` or a loopback address
    /// (also as `hostaddr`). Nobody sits between leadsync and such a server but its own
    /// host's administrator; a local proxy (Cloud SQL Auth Proxy, pgbouncer) that carries
    /// the connection on over verified TLS is the usual case.
    pub fn is_local(&self) -> bool {
        use tokio_postgres::config::Host;
        let hosts_local = self.config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        });
        let addrs = self.config.get_hostaddrs();
        if addrs.is_empty() {
            hosts_local
        } else {
            addrs.iter().all(|ip| ip.is_loopback())
        }
    }

    /// Why the server is not known to be the one meant: `None` when TLS checks its
    /// certificate against trusted roots, or when it is local ([`SourceUrl::is_local`]).
    pub fn unverified(&self) -> Option<String> {
        if self.tls.verifies_chain() || self.is_local() {
            return None;
        }
        Some(match self.tls.mode {
            SslMode::Disable => "sslmode=disable sends everything in plain text".to_owned(),
            SslMode::Prefer => "sslmode=prefer accepts any certificate, and no TLS at all when \
                                the other end declines it"
                .to_owned(),
            _ => format!(
                "sslmode={} accepts any certificate (there is no root certificate to check it \
                 against)",
                self.tls.mode.as_str()
            ),
        })
    }

    /// Whether the URL carries a password that would go to a server not verified: whoever
    /// answers in its place can ask for it in clear text (or as an MD5 hash, as good as the
    /// password), and a relayed SCRAM exchange logs them in as leadsync.
    pub fn password_unprotected(&self) -> Option<String> {
        self.config.get_password()?;
        self.unverified()
    }

    /// The first host, as written (a name, an address or a socket directory).
    pub fn host(&self) -> String {
        use tokio_postgres::config::Host;
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }
}

/// Parses a connection URL (`postgres://…?sslmode=…`) or key/value string
/// (`host=… sslmode=…`), reading the TLS parameters itself.
pub fn parse_url(url: &str) -> Result<SourceUrl, ConnectError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    parse_url_with(url, &|var| std::env::var(var).ok(), home.as_deref())
}

fn parse_url_with(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<SourceUrl, ConnectError> {
    let (rest, params) = split_tls_params(url)?;
    let tls = TlsOptions::resolve(&params, env, home)?;
    let mut config =
        tokio_postgres::Config::from_str(&rest).map_err(|e| ConnectError::BadUrl(e.to_string()))?;
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(SourceUrl { config, tls })
}

/// Removes [`TLS_PARAMS`] from a URL's query or a key/value string; returns what is left
/// and the removed `(name, value)` pairs, decoded.
fn split_tls_params(url: &str) -> Result<(String, Vec<(String, String)>), ConnectError> {
    let mut found = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), found));
        };
        let mut kept = Vec::new();
        for item in query.split('&') {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let key = percent_decode(key)?;
            if TLS_PARAMS.contains(&key.as_str()) {
                found.push((key, percent_decode(value)?));
            } else {
                kept.push(item);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, found));
    }
    // key = value pairs; values may be single-quoted, with backslash escapes.
    let bytes = url.as_bytes();
    let mut rest = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            rest.push_str(&url[start..]);
            break;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &url[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() || bytes[i] != b'=' {
            // Not a pair: leave it for tokio_postgres to report.
            rest.push_str(&url[start..]);
            break;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    }
                    b'\'' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    _ => {
                        let ch = url[i..].chars().next().unwrap_or_default();
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if !closed {
                return Err(ConnectError::BadUrl(format!(
                    "unterminated quoted value of `{key}`"
                )));
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let ch = url[i..].chars().next().unwrap_or_default();
                value.push(ch);
                i += ch.len_utf8();
            }
        }
        if TLS_PARAMS.contains(&key) {
            found.push((key.to_owned(), value));
        } else {
            rest.push_str(&url[start..i]);
        }
    }
    Ok((rest.trim().to_owned(), found))
}

fn percent_decode(text: &str) -> Result<String, ConnectError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnectError::BadUrl(format!("bad percent-encoding in `{text}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnectError::BadUrl(format!("`{text}` is not UTF-8")))
}

/// `user@host:port/database`, for messages.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("(default user)"),
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// The settings every leadsync session starts with, replication sessions included. Values
/// read as text (pgoutput) are printed in fixed formats whatever the server's, database's or
/// role's `DateStyle`; and the database's guards (a `statement_timeout`, `lock_timeout` or
/// idle timeout set on the database or role) are off, since the daemon's transactions may
/// legitimately run long or wait on the stream. Startup options take precedence over
/// `ALTER DATABASE/ROLE … SET`. Where leadsync must not wait on a lock, it says so itself
/// (`NOWAIT`, `SET LOCAL lock_timeout`).
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,MDY \
     -c IntervalStyle=postgres -c extra_float_digits=3 -c statement_timeout=0 \
     -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0";

/// Parses the URL and applies leadsync's session settings.
pub fn session_config(url: &SecretString) -> Result<SourceUrl, ConnectError> {
    let mut source = parse_url(url.expose_secret())?;
    source
        .config
        .options(SESSION_OPTIONS)
        .application_name("leadsync")
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(source)
}

/// Opens a session and drives it on a background task.
pub async fn connect(url: &SecretString) -> Result<Client, ConnectError> {
    let source = session_config(url)?;
    let config = &source.config;
    let failed = |e: tokio_postgres::Error| connect_failure(&source, &e);
    if source.tls.mode == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
        drive(connection);
        Ok(client)
    } else {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(&source.tls)?);
        let (client, connection) = config.connect(tls).await.map_err(failed)?;
        drive(connection);
        Ok(client)
    }
}

/// Asks the server to cancel what the session of `token` is running (a cancel request on a
/// connection of its own, as `psql`'s Ctrl-C). Best effort: the caller goes on either way.
pub async fn cancel(url: &SecretString, token: &tokio_postgres::CancelToken) {
    let Ok(source) = session_config(url) else {
        return;
    };
    let sent = if source.tls.mode == SslMode::Disable {
        token.cancel_query(NoTls).await
    } else {
        match rustls_config(&source.tls) {
            Ok(config) => {
                token
                    .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(config))
                    .await
            }
            Err(_) => return,
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "the cancel request was not delivered");
    }
}

fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = connection;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => log_notice(&notice),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "source connection closed");
                    break;
                }
                None => break,
            }
        }
    });
}

/// A server's notice: warnings are logged as warnings; the rest (`NOTICE: relation …
/// already exists, skipping` from an idempotent setup, `INFO`, `DEBUG`) only at debug.
fn log_notice(notice: &tokio_postgres::error::DbError) {
    use tokio_postgres::error::Severity;
    match notice.parsed_severity() {
        Some(Severity::Warning) => {
            tracing::warn!(
                code = notice.code().code(),
                "PostgreSQL warns: {}",
                notice.message()
            )
        }
        _ => tracing::debug!(
            code = notice.code().code(),
            "PostgreSQL {}: {}",
            notice.severity(),
            notice.message()
        ),
    }
}

fn connect_failure(source: &SourceUrl, err: &tokio_postgres::Error) -> ConnectError {
    let target = describe_target(&source.config);
    let cause = error_text(err);
    let hint = tls_hint(&cause, &source.tls, &source.host());
    match hint {
        // The server refused a plain connection: not a TLS failure, but TLS is the fix.
        Some(hint) if err.as_db_error().is_some() => ConnectError::Unreachable {
            target,
            cause: format!("{cause}. {hint}"),
        },
        hint if hint.is_some() || cause.contains("TLS") => ConnectError::Tls {
            target,
            cause,
            hint,
        },
        _ if refused(err) => ConnectError::Refused { target, cause },
        _ => ConnectError::Unreachable { target, cause },
    }
}

/// Whether the server refused the connection for good: invalid authorization (a password,
/// a role, no `pg_hba.conf` line: class 28), a database that does not exist (3D000), or no
/// CONNECT privilege on it (42501).
fn refused(err: &tokio_postgres::Error) -> bool {
    err.code()
        .map(|c| c.code())
        .is_some_and(|code| code.starts_with("28") || code == "3D000" || code == "42501")
}

/// What to do about a TLS failure, from the text of the error (the same words come from
/// `tokio_postgres` and from the replication crate, both on rustls).
pub fn tls_hint(cause: &str, tls: &TlsOptions, host: &str) -> Option<String> {
    let squeezed: String = cause
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if squeezed.contains("unknownissuer") {
        return Some(format!(
            "The server's certificate was not issued by a certificate authority in {}: point \
             sslrootcert at the CA certificate that signed the server's certificate",
            tls.describe_roots()
        ));
    }
    if squeezed.contains("notvalidforname") {
        return Some(format!(
            "The server's certificate does not name the host `{host}`, and sslmode=verify-full \
             checks that: connect by a name the certificate lists (in its subjectAltName), or \
             use sslmode=verify-ca to check only who issued it"
        ));
    }
    if squeezed.contains("certificateexpired") {
        return Some("The server's certificate has expired: renew it on the server".into());
    }
    if squeezed.contains("serverdoesnotsupporttls") || squeezed.contains("sslrequestrejected") {
        return Some(format!(
            "The server does not accept TLS connections (ssl = off), and sslmode={} requires \
             TLS: turn ssl on in postgresql.conf, or lower sslmode",
            tls.mode.as_str()
        ));
    }
    if squeezed.contains("nopg_hba.confentry") && squeezed.contains("noencryption") {
        return Some(
            "The server accepts only TLS connections from here (hostssl in pg_hba.conf): \
             set sslmode=verify-full (or require) in source.url"
                .into(),
        );
    }
    if squeezed.contains("certificaterequired") || squeezed.contains("certificate_required") {
        return Some(
            "The server wants a client certificate: give sslcert and sslkey in source.url".into(),
        );
    }
    None
}

/// The rustls client settings for `tls` (not called for `disable`).
pub fn rustls_config(tls: &TlsOptions) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsSettings(format!("TLS versions: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.verifies_chain() {
        let roots = Arc::new(root_store(tls)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| ConnectError::TlsSettings(format!("certificate verifier: {e}")))?;
        if tls.verifies_host() {
            webpki
        } else {
            Arc::new(IssuerOnly { inner: webpki })
        }
    } else {
        Arc::new(AnyCertificate { provider })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ConnectError::TlsSettings(format!(
                    "sslkey `{}`: cannot read a private key from it: {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConnectError::TlsSettings(format!("sslcert/sslkey: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// ring, as the replication crate uses (both providers are compiled in, so rustls cannot
/// pick a process default by itself).
fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(tls: &TlsOptions) -> Result<RootCertStore, ConnectError> {
    let mut roots = RootCertStore::empty();
    match &tls.root_cert {
        Some(RootCert::File(path)) => {
            let (added, _) =
                roots.add_parsable_certificates(read_certificates(path, "sslrootcert")?);
            if added == 0 {
                return Err(ConnectError::TlsSettings(format!(
                    "sslrootcert `{}` holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        Some(RootCert::System) => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        None => {}
    }
    Ok(roots)
}

fn read_certificates(
    path: &Path,
    param: &str,
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |e: String| ConnectError::TlsSettings(format!("{param} `{}`: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// `prefer` and `require` without roots: any certificate (libpq does not check it either),
/// but the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct IssuerOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IssuerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The names (DNS names and IP addresses of its subjectAltName) of the certificate the
/// server at `host:port` presents, after checking that it was issued by a trusted root.
/// The replication crate checks the host name even in `verify-ca`; leadsync gives it a
/// name the certificate holds instead, and it still checks the chain itself.
pub async fn server_certificate_names(
    host: &str,
    port: u16,
    tls: &TlsOptions,
) -> Result<Vec<String>, ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = format!("{host}:{port}");
    let unreachable = |e: std::io::Error| ConnectError::Unreachable {
        target: target.clone(),
        cause: e.to_string(),
    };
    let mut tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| ConnectError::Unreachable {
        target: target.clone(),
        cause: "timed out".into(),
    })?
    .map_err(unreachable)?;
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(unreachable)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(unreachable)?;
    if answer[0] != b'S' {
        let cause = "server does not support TLS".to_owned();
        return Err(ConnectError::Tls {
            hint: tls_hint(&cause, tls, host),
            target,
            cause,
        });
    }
    let mut chain_only = tls.clone();
    chain_only.mode = SslMode::VerifyCa;
    let config = rustls_config(&chain_only)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError::TlsSettings(format!("host `{host}`: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let cause = format!("TLS handshake failed: {e}");
            ConnectError::Tls {
                hint: tls_hint(&cause, tls, host),
                target: target.clone(),
                cause,
            }
        })?;
    let (_, session) = stream.get_ref();
    let der = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| ConnectError::Tls {
            target: target.clone(),
            cause: "the server sent no certificate".into(),
            hint: None,
        })?;
    certificate_names(der.as_ref()).map_err(|cause| ConnectError::Tls {
        target,
        cause,
        hint: None,
    })
}

/// DNS names and IP addresses in a DER certificate's subjectAltName.
fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("cannot read the server's certificate: {e}"))?;
    let san = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| format!("cannot read the certificate's subjectAltName: {e}"))?;
    let mut names = Vec::new();
    for name in san.map(|(_, san)| san.0).unwrap_or_default() {
        match name {
            GeneralName::DnsName(dns) => names.push(dns.to_string()),
            GeneralName::IpAddress(octets) => {
                let bytes = octets.as_bytes();
                if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                    names.push(std::net::IpAddr::from(v4).to_string());
                } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                    names.push(std::net::IpAddr::from(v6).to_string());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The most useful text of a `tokio_postgres` error: the server's message where there is
/// one, with its detail and hint, else the I/O cause. A missing privilege also says what
/// to grant (see [`crate::grants::privilege_hint`]).
pub fn error_text(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = db.message().to_owned();
        if let Some(detail) = db.detail().map(without_row_data) {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
            && let Some(what) = crate::grants::privilege_hint(db.message())
        {
            text.push_str(&format!(". {what}"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A server's DETAIL without the row data it may quote: "Failing row contains (…)" loses
/// the row, "Key (email)=(…) already exists" the key's values (the columns stay named).
/// Errors end up in logs, `/status` and dead letters, none of which is a place for a
/// customer's personal data (the dead letter's payload keeps what a replay needs).
pub fn without_row_data(detail: &str) -> String {
    if detail.starts_with("Failing row contains") {
        return "Failing row contains (values not shown)".into();
    }
    if let Some(rest) = detail.strip_prefix("Key (")
        && let Some(columns_end) = rest.find(")=(")
    {
        let columns = &rest[..columns_end];
        let values = &rest[columns_end + 3..];
        const ENDINGS: [&str; 5] = [
            ") already exists",
            ") is not present in table",
            ") is still referenced from table",
            ") conflicts with existing key",
            ") conflicts with key",
        ];
        let ending = ENDINGS
            .iter()
            .filter_map(|e| values.rfind(e).map(|at| (at, e)))
            .max_by_key(|(at, _)| *at);
        let tail = match ending {
            Some((at, e)) if e.contains("conflicts") => {
                // The other key's values follow: keep its columns only.
                let after = &values[at + 1..];
                after
                    .find(")=(")
                    .map(|i| format!("{})=(…).", &after[..i]))
                    .unwrap_or_else(|| format!("{}.", e.trim_start_matches(')')))
            }
            Some((at, _)) => values[at + 1..].to_owned(),
            None => String::new(),
        };
        return format!("Key ({columns})=(…){tail}");
    }
    detail.to_owned()
}

/// `"name"` quoted as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` quoted as an SQL literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_only_to_a_verified_or_local_server() {
        let unprotected = |url: &str| parse(url).unwrap().password_unprotected().is_some();
        let remote = "postgres://app:pw@db.example.com/crm";
        for mode in ["disable", "prefer", "require"] {
            assert!(unprotected(&format!("{remote}?sslmode={mode}")), "{mode}");
        }
        assert!(unprotected(remote), "prefer by default");
        assert!(unprotected(
            "host=10.0.0.5 user=app password=pw sslmode=require"
        ));
        for verified in [
            format!("{remote}?sslmode=verify-full&sslrootcert=/ca.pem"),
            format!("{remote}?sslmode=verify-ca&sslrootcert=/ca.pem"),
            format!("{remote}?sslmode=require&sslrootcert=/ca.pem"),
            format!("{remote}?sslmode=verify-full&sslrootcert=system"),
        ] {
            assert!(!unprotected(&verified), "{verified}");
        }
        for local in [
            "postgres://app:pw@localhost/crm?sslmode=disable",
            "postgres://app:pw@127.0.0.1:5432/crm",
            "postgres://app:pw@[::1]:5432/crm",
            "host=/var/run/postgresql user=app password=pw",
            "host=db.example.com hostaddr=127.0.0.1 user=app password=pw sslmode=prefer",
        ] {
            assert!(!unprotected(local), "{local}");
        }
        // No password, nothing to protect (a client certificate, or trust): only a warning.
        let bare = parse("postgres://app@db.example.com/crm?sslmode=require").unwrap();
        assert!(bare.password_unprotected().is_none() && bare.unverified().is_some());
        // hostaddr decides where the connection goes.
        assert!(unprotected(
            "host=localhost hostaddr=10.1.2.3 user=app password=pw sslmode=prefer"
        ));
    }

    #[test]
    fn row_data_never_shows_in_an_error() {
        assert_eq!(
            without_row_data("Failing row contains (7, Ann, ann@example.com, null)."),
            "Failing row contains (values not shown)"
        );
        assert_eq!(
            without_row_data("Key (email)=(ann@example.com) already exists."),
            "Key (email)=(…) already exists."
        );
        assert_eq!(
            without_row_data("Key (lower(email))=(a) b)) already exists."),
            "Key (lower(email))=(…) already exists."
        );
        assert_eq!(
            without_row_data(
                "Key (workspace_id)=(6f1c0000-0000-0000-0000-000000000000) is not present in \
                 table \"workspaces\"."
            ),
            "Key (workspace_id)=(…) is not present in table \"workspaces\"."
        );
        assert_eq!(
            without_row_data("Key (during)=([1,5)) conflicts with existing key (during)=([2,3))."),
            "Key (during)=(…) conflicts with existing key (during)=(…)."
        );
        assert_eq!(
            without_row_data("Key (a, b)=(x, y) is still referenced from table \"t\"."),
            "Key (a, b)=(…) is still referenced from table \"t\"."
        );
        assert_eq!(without_row_data("Key (a)=(secret"), "Key (a)=(…)");
        assert_eq!(
            without_row_data("Process 12 waits for ShareLock on transaction 9."),
            "Process 12 waits for ShareLock on transaction 9."
        );
    }

    fn parse(url: &str) -> Result<SourceUrl, ConnectError> {
        parse_url_with(url, &|_| None, None)
    }

    #[test]
    fn url_tls_parameters_are_read_and_removed() {
        let s = parse(
            "postgres://app:pw@db.example.com:6543/crm?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            s.tls.root_cert,
            Some(RootCert::File(PathBuf::from("/etc/ca.pem")))
        );
        assert!(s.tls.verifies_chain() && s.tls.verifies_host());
        assert_eq!(s.config.get_application_name(), Some("x"));
        assert_eq!(s.config.get_dbname(), Some("crm"));
        assert_eq!(s.host(), "db.example.com");
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn key_value_tls_parameters_are_read_and_removed() {
        let s = parse(
            "host=db port=5433 sslmode = verify-ca sslrootcert='/path with space/ca.pem' \
             user=app sslcert=/c.pem sslkey=/k.pem dbname=crm",
        )
        .unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            s.tls.root_cert,
            Some(RootCert::File(PathBuf::from("/path with space/ca.pem")))
        );
        assert_eq!(s.tls.client_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(s.tls.client_key, Some(PathBuf::from("/k.pem")));
        assert!(s.tls.verifies_chain() && !s.tls.verifies_host());
        assert_eq!(s.config.get_user(), Some("app"));
        assert_eq!(s.config.get_dbname(), Some("crm"));
        assert_eq!(s.config.get_ports(), &[5433]);
    }

    #[test]
    fn default_is_prefer_and_disable_is_plain() {
        let s = parse("postgres://app@db/crm").unwrap();
        assert_eq!(s.tls, TlsOptions::default());
        assert!(!s.tls.verifies_chain());
        let s = parse("postgres://app@db/crm?sslmode=disable").unwrap();
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn environment_fills_in_what_the_url_leaves_out() {
        let env = |var: &str| match var {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
            _ => None,
        };
        let s = parse_url_with("postgres://app@db/crm", &env, None).unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            s.tls.root_cert,
            Some(RootCert::File(PathBuf::from("/env/ca.pem")))
        );
        // The URL wins.
        let s = parse_url_with("postgres://app@db/crm?sslmode=require", &env, None).unwrap();
        assert_eq!(s.tls.mode, SslMode::Require);
        assert!(
            s.tls.verifies_chain(),
            "require with a root file checks the chain"
        );
    }

    #[test]
    fn default_root_certificate_is_found_under_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "x").unwrap();
        let s = parse_url_with(
            "postgres://app@db/crm?sslmode=verify-ca",
            &|_| None,
            Some(home.path()),
        )
        .unwrap();
        assert_eq!(
            s.tls.root_cert,
            Some(RootCert::File(home.path().join(".postgresql/root.crt")))
        );
    }

    #[test]
    fn impossible_tls_settings_say_what_is_wrong() {
        let text = |url: &str| parse(url).unwrap_err().to_string();
        assert!(text("postgres://db/x?sslmode=allow").contains("not one of disable"));
        assert!(text("postgres://db/x?sslmode=verify-full").contains("sslrootcert="));
        assert!(
            text("postgres://db/x?sslmode=require&sslrootcert=system")
                .contains("needs sslmode=verify-full")
        );
        assert!(text("postgres://db/x?sslcert=/c.pem").contains("both sslcert and sslkey"));
        assert!(text("postgres://db/x?sslmode=%zz").contains("percent-encoding"));
    }

    #[test]
    fn tls_failures_get_a_hint() {
        let tls = TlsOptions {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File("/ca.pem".into())),
            ..TlsOptions::default()
        };
        let hint = |cause: &str| tls_hint(cause, &tls, "db").unwrap_or_default();
        assert!(
            hint("error performing TLS handshake: invalid peer certificate: UnknownIssuer")
                .contains("sslrootcert `/ca.pem`")
        );
        assert!(
            hint("invalid peer certificate: certificate not valid for name \"db\"; certificate is only valid for localhost")
                .contains("does not name the host `db`")
        );
        assert!(
            hint("error performing TLS handshake: server does not support TLS")
                .contains("ssl = off")
        );
        assert_eq!(tls_hint("connection refused", &tls, "db"), None);
    }
}
