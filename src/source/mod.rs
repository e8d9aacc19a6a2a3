//! The source side: the replication slot, its exported snapshot and the change stream,
//! through `pgwire-replication` (protocol version 1; see the notes on how it behaves on
//! PostgreSQL 15).

pub mod convert;

use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use secrecy::ExposeSecret;
use tokio_postgres::Client;

use crate::Lsn;
use crate::config::Settings;
use crate::db;
use crate::error::{ErrorKind, is_transient_sqlstate};

/// Events buffered between the socket reader and the apply loop. Bounds memory; the reader
/// keeps answering the server while the buffer is full.
const BUFFER_EVENTS: usize = 4_096;

/// A failure on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source.url: {0}")]
    BadUrl(String),
    #[error("replication connection: {0}")]
    Stream(String),
    #[error(
        "replication slot `{slot}` no longer exists, but leadsync had been streaming from it: \
         changes made since it disappeared cannot be recovered from it. Re-run the first load: \
         `leadsync teardown` then `leadsync setup` and `leadsync run` (or `leadsync resync`)"
    )]
    SlotLost { slot: String },
    #[error(
        "replication slot `{slot}` was invalidated by the server (wal_status = lost, usually \
         max_slot_wal_keep_size exceeded while leadsync was behind): the WAL it needed is gone. \
         Re-run the first load: `leadsync teardown`, `leadsync setup`, `leadsync run`"
    )]
    SlotInvalidated { slot: String },
    #[error("{context}: {message}")]
    Query {
        context: &'static str,
        message: String,
        sqlstate: Option<String>,
    },
}

impl SourceError {
    /// What the daemon does about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Stream(text) => {
                match sqlstate_in(text) {
                    // An active slot ("is active for PID") or a server going down: retry.
                    Some(code) if code == "55006" || is_transient_sqlstate(&code) => {
                        ErrorKind::Transient
                    }
                    Some(_) => ErrorKind::Fatal,
                    None => ErrorKind::Transient,
                }
            }
            SourceError::Query { sqlstate, .. } => match sqlstate.as_deref() {
                None => ErrorKind::Transient,
                // An unfinished load's slot still held by its walsender, which is exiting.
                Some(code) if code == "55006" || is_transient_sqlstate(code) => {
                    ErrorKind::Transient
                }
                Some(_) => ErrorKind::Fatal,
            },
            SourceError::BadUrl(_)
            | SourceError::SlotLost { .. }
            | SourceError::SlotInvalidated { .. } => ErrorKind::Fatal,
        }
    }
}

/// The SQLSTATE the replication crate writes into its server error text.
fn sqlstate_in(text: &str) -> Option<String> {
    let at = text.find("SQLSTATE ")? + "SQLSTATE ".len();
    text.get(at..at + 5).map(str::to_owned)
}

impl From<PgWireError> for SourceError {
    fn from(e: PgWireError) -> Self {
        SourceError::Stream(e.to_string())
    }
}

/// Wraps a query error on an ordinary connection.
pub fn query_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> SourceError {
    move |e| SourceError::Query {
        context,
        message: db::error_text(&e),
        sqlstate: e.code().map(|c| c.code().to_owned()),
    }
}

/// What the server says about the slot.
#[derive(Debug, Clone, Default)]
pub struct SlotStatus {
    pub exists: bool,
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub active_pid: Option<i32>,
}

/// Reads the slot's row from `pg_replication_slots`.
pub async fn slot_status(client: &Client, slot: &str) -> Result<SlotStatus, SourceError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status, active_pid
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_error("reading the replication slot"))?;
    Ok(match row {
        None => SlotStatus::default(),
        Some(row) => SlotStatus {
            exists: true,
            confirmed_flush: row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok()),
            wal_status: row.get(1),
            active_pid: row.get(2),
        },
    })
}

/// The replication connection's settings, from `source.url` (its TLS settings included:
/// see [`db`]). For `verify-ca` the certificate's own name must be known first; use
/// [`replication_config_for`], which finds it.
pub fn replication_config(
    settings: &Settings,
    start: Lsn,
) -> Result<ReplicationConfig, SourceError> {
    let source = db::parse_url(settings.source_url().expose_secret())
        .map_err(|e| SourceError::BadUrl(e.to_string()))?;
    replication_config_with(settings, &source, start, None)
}

/// [`replication_config`], after asking the server for its certificate's names where
/// `verify-ca` needs one.
pub async fn replication_config_for(
    settings: &Settings,
    start: Lsn,
) -> Result<ReplicationConfig, SourceError> {
    let source = db::parse_url(settings.source_url().expose_secret())
        .map_err(|e| SourceError::BadUrl(e.to_string()))?;
    let mut name = None;
    // (No TLS on a Unix socket.)
    if source.tls.verifies_chain() && !source.tls.verifies_host() && !source.host().starts_with('/')
    {
        let port = source.config.get_ports().first().copied().unwrap_or(5432);
        let names = db::server_certificate_names(&source.host(), port, &source.tls)
            .await
            .map_err(|e| SourceError::Stream(e.to_string()))?;
        name = Some(names.into_iter().next().ok_or_else(|| {
            SourceError::Stream(format!(
                "the certificate of {} names no host in its subjectAltName, which the \
                 replication connection needs to check it (sslmode={}): issue the server a \
                 certificate with a subjectAltName",
                source.host(),
                source.tls.mode.as_str()
            ))
        })?);
    }
    replication_config_with(settings, &source, start, name)
}

fn replication_config_with(
    settings: &Settings,
    source: &db::SourceUrl,
    start: Lsn,
    certificate_name: Option<String>,
) -> Result<ReplicationConfig, SourceError> {
    let pg = &source.config;
    let host = source.host();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let user = pg.get_user().unwrap_or("postgres").to_owned();
    let database = pg.get_dbname().unwrap_or(&user).to_owned();
    let tls = replication_tls(&source.tls, &host, certificate_name);
    let mut config = ReplicationConfig::new(
        host,
        user,
        password,
        database,
        settings.slot.name.clone(),
        settings.publication.name.clone(),
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    .with_tls(tls)
    .with_start_lsn(start.into())
    .with_status_interval(Duration::from_millis(settings.slot.status_interval_ms))
    .with_wakeup_interval(Duration::from_millis(settings.slot.status_interval_ms))
    .with_buffer_size(BUFFER_EVENTS)
    .with_application_name("leadsync");
    // Values are decoded as text: the same fixed formats as every other session.
    config.options = Some(db::SESSION_OPTIONS.to_owned());
    Ok(config)
}

/// The replication crate's TLS settings for `tls`. The crate checks the host name whenever
/// it checks the chain, so `verify-ca` passes it a name the certificate holds
/// (`certificate_name`); an IP address is checked against the certificate's IP entries, as
/// libpq does.
fn replication_tls(
    tls: &db::TlsOptions,
    host: &str,
    certificate_name: Option<String>,
) -> TlsConfig {
    use pgwire_replication::SslMode as Mode;
    let mut config = match tls.mode {
        db::SslMode::Disable => TlsConfig::disabled(),
        db::SslMode::Prefer => TlsConfig {
            mode: Mode::Prefer,
            ..TlsConfig::disabled()
        },
        _ if !tls.verifies_chain() => TlsConfig::require(),
        _ => {
            let ca = match &tls.root_cert {
                Some(db::RootCert::File(path)) => Some(path.clone()),
                // `system`: the crate's own copy of the same Mozilla roots.
                Some(db::RootCert::System) | None => None,
            };
            let config = TlsConfig::verify_full(ca);
            if tls.verifies_host() {
                if host.parse::<std::net::IpAddr>().is_ok() {
                    config.with_sni_hostname(host)
                } else {
                    config
                }
            } else {
                config.with_sni_hostname(certificate_name.unwrap_or_else(|| host.to_owned()))
            }
        }
    };
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        config = config.with_client_cert(cert, key);
    }
    config
}

/// A replication connection that could not be opened, with what to do about a TLS or a
/// privilege problem.
fn connect_error(settings: &Settings, err: PgWireError) -> SourceError {
    let text = err.to_string();
    let mut hints = Vec::new();
    if let Ok(source) = db::parse_url(settings.source_url().expose_secret())
        && let Some(hint) = db::tls_hint(&text, &source.tls, &source.host())
    {
        hints.push(hint);
    }
    let message = text.strip_prefix("server error: ").unwrap_or(&text);
    let message = message.split(" (SQLSTATE").next().unwrap_or(message);
    if sqlstate_in(&text).as_deref() == Some("42501")
        && let Some(hint) = crate::grants::privilege_hint(message)
    {
        hints.push(hint);
    }
    if hints.is_empty() {
        SourceError::Stream(text)
    } else {
        SourceError::Stream(format!("{text}. {}", hints.join(". ")))
    }
}

/// A slot just created, with the snapshot that holds exactly the data before its start.
pub struct CreatedSlot {
    /// The gated session that created the slot; it must stay idle until the snapshot has
    /// been imported, then [`ReplicationClient::start`] streams from the slot's start.
    pub client: ReplicationClient,
    /// Where the stream begins: every change after the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// Creates the slot on a replication connection and exports its snapshot.
pub async fn create_slot(settings: &Settings) -> Result<CreatedSlot, SourceError> {
    // Start 0/0: the server then starts at the slot's confirmed position, which is its
    // consistent point (the position cannot be known before the slot exists).
    let config = replication_config_for(settings, Lsn::ZERO).await?;
    let mut client = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| connect_error(settings, e))?;
    let rows = client
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
            settings.slot.name
        ))
        .await
        // The first command is where a failed connection (TLS, authentication) shows.
        .map_err(|e| connect_error(settings, e))?;
    let row = rows
        .first()
        .ok_or_else(|| SourceError::Stream("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let field = |i: usize| {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                SourceError::Stream(format!("CREATE_REPLICATION_SLOT: column {i} missing"))
            })
    };
    let consistent_point: Lsn = field(1)?
        .parse()
        .map_err(|e| SourceError::Stream(format!("consistent point: {e}")))?;
    let snapshot = field(2)?;
    Ok(CreatedSlot {
        client,
        consistent_point,
        snapshot,
    })
}

/// Opens the change stream from `start` (the server begins at the later of `start` and the
/// slot's confirmed position).
pub async fn open_stream(
    settings: &Settings,
    start: Lsn,
) -> Result<ReplicationClient, SourceError> {
    let config = replication_config_for(settings, start).await?;
    let mut client = ReplicationClient::connect(config)
        .await
        .map_err(|e| connect_error(settings, e))?;
    // Connecting runs in the background: wait for the stream to start, so that a failed
    // connection (TLS, authentication, privileges) is reported with what to do about it.
    client
        .wait_started()
        .await
        .map_err(|e| connect_error(settings, e))?;
    Ok(client)
}

/// Drops the slot (after a first load that did not finish, its snapshot is gone).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), SourceError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_error("dropping the unfinished slot"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_map_onto_the_replication_crate() {
        use pgwire_replication::SslMode as Mode;
        let tls = |url: &str| db::parse_url(url).unwrap().tls;
        let prefer = replication_tls(&tls("postgres://u@db/x"), "db", None);
        assert_eq!(prefer.mode, Mode::Prefer);
        let disable = replication_tls(&tls("postgres://u@db/x?sslmode=disable"), "db", None);
        assert_eq!(disable.mode, Mode::Disable);
        let require = replication_tls(&tls("postgres://u@db/x?sslmode=require"), "db", None);
        assert_eq!(require.mode, Mode::Require);
        // require with a root certificate checks the chain, as libpq does.
        let require_ca = replication_tls(
            &tls("postgres://u@db/x?sslmode=require&sslrootcert=/ca.pem"),
            "db",
            Some("db.internal".into()),
        );
        assert_eq!(require_ca.mode, Mode::VerifyFull);
        assert_eq!(require_ca.sni_hostname.as_deref(), Some("db.internal"));
        let full = replication_tls(
            &tls("postgres://u@db/x?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c&sslkey=/k"),
            "db",
            None,
        );
        assert_eq!(
            (
                full.mode,
                full.ca_pem_path.as_deref(),
                full.sni_hostname.as_deref()
            ),
            (
                Mode::VerifyFull,
                Some(std::path::Path::new("/ca.pem")),
                None
            )
        );
        assert!(full.is_mtls());
        // An address is checked against the certificate's IP entries.
        let ip = replication_tls(
            &tls("postgres://u@10.0.0.5/x?sslmode=verify-full&sslrootcert=system"),
            "10.0.0.5",
            None,
        );
        assert_eq!(
            (ip.ca_pem_path, ip.sni_hostname.as_deref()),
            (None, Some("10.0.0.5"))
        );
    }

    #[test]
    fn sqlstate_is_read_from_the_crate_text() {
        assert_eq!(
            sqlstate_in(
                "server error: replication slot \"x\" is active for PID 12 (SQLSTATE 55006)"
            ),
            Some("55006".into())
        );
        assert_eq!(sqlstate_in("io error: broken pipe"), None);
        assert_eq!(
            SourceError::Stream("io error: broken pipe".into()).kind(),
            ErrorKind::Transient
        );
        assert_eq!(
            SourceError::Stream("server error: x (SQLSTATE 42704)".into()).kind(),
            ErrorKind::Fatal
        );
    }
}
