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

/// SQLSTATE classes that mean "the session is gone, try again": connection exceptions (08),
/// operator intervention such as a server shutdown (57P01-57P03) and serialization or
/// deadlock failures (40).
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("40")
}

/// SQLSTATE classes that mean "this row does not fit": data exceptions (22) and integrity
/// constraint violations (23).
pub fn is_bad_row_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}
