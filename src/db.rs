//! Ordinary (non-replication) connections to the source database.
//!
//! Every session runs with `TimeZone = UTC` so that timestamps mean the same to every
//! reader, and names itself `leadsync` in `pg_stat_activity`. Errors name the server and
//! database, never the password.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, NoTls};

/// How long a connection attempt may take before it is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("source.url is not a PostgreSQL connection URL: {0}")]
    BadUrl(String),
    #[error(
        "cannot connect to {target}: {cause}. Check that the server is running and reachable \
         and that source.url is right"
    )]
    Unreachable { target: String, cause: String },
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

/// Parses the URL and applies leadsync's session settings.
pub fn session_config(url: &SecretString) -> Result<tokio_postgres::Config, ConnectError> {
    let mut config = tokio_postgres::Config::from_str(url.expose_secret())
        .map_err(|e| ConnectError::BadUrl(e.to_string()))?;
    config
        .options("-c TimeZone=UTC")
        .application_name("leadsync")
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

/// Opens a session and drives it on a background task.
pub async fn connect(url: &SecretString) -> Result<Client, ConnectError> {
    let config = session_config(url)?;
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|e| ConnectError::Unreachable {
                target: describe_target(&config),
                cause: error_text(&e),
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "source connection closed");
        }
    });
    Ok(client)
}

/// The most useful text of a `tokio_postgres` error: the server's message where there is
/// one, with its detail and hint, else the I/O cause. A missing privilege also says what
/// to grant (see [`crate::grants::privilege_hint`]).
pub fn error_text(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = db.message().to_owned();
        if let Some(detail) = db.detail() {
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

/// `"name"` quoted as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` quoted as an SQL literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
