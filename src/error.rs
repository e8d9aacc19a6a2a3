//! How failures are sorted. Each stage has its own error enum with a `kind()` answering
//! [`ErrorKind`], which decides what the daemon does next.

/// What the daemon does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// One row does not fit the target: park it in the dead letters and go on.
    BadRow,
    /// The connection or the server went away: reconnect with backoff and resume from the
    /// checkpoint.
    Transient,
    /// Nothing will change by retrying: stop and tell the operator what to do.
    Fatal,
}

impl ErrorKind {
    /// The `kind` label of `leadsync_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRow => "bad_row",
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
        }
    }
}

/// SQLSTATE classes that mean "try again": connection exceptions (08), operator
/// intervention such as a server shutdown (57P01-57P03), serialization or deadlock failures
/// (40), and the database's own guards — a cancelled statement (57014), a lock not granted in
/// time (55P03), a session ended for idling (25P03, 57P05).
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("40")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25P03" | "57P05"
        )
}

/// The server setting behind an error, when it is one of the database's guards: a log line
/// names it so an operator can find where it is set (`ALTER DATABASE … SET`, `ALTER ROLE …
/// SET`). leadsync's own sessions turn them off; these still come from a cancel by hand or a
/// setting changed while a session runs.
pub fn guard_setting(code: &str) -> Option<&'static str> {
    match code {
        "57014" => Some("statement_timeout (or a cancel request)"),
        "55P03" => Some("lock_timeout"),
        "25P03" => Some("idle_in_transaction_session_timeout"),
        "57P05" => Some("idle_session_timeout"),
        _ => None,
    }
}

/// SQLSTATE classes that mean "this row does not fit": data exceptions (22) and integrity
/// constraint violations (23).
pub fn is_bad_row_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}
