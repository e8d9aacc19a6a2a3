//! Metric names, defined once. Labels stay few: `table`, `op`, `kind` — never a row id.

/// Source WAL position minus the processed LSN, in bytes.
pub const LAG_BYTES: &str = "leadsync_lag_bytes";
/// Age of the oldest source transaction not yet applied, in seconds; 0 when caught up.
pub const LAG_SECONDS: &str = "leadsync_lag_seconds";
/// The processed LSN, as a number.
pub const APPLIED_LSN: &str = "leadsync_applied_lsn";
/// Source row changes applied, by `table` and `op`.
pub const CHANGES_TOTAL: &str = "leadsync_changes_total";
/// Target transactions committed.
pub const TRANSACTIONS_TOTAL: &str = "leadsync_transactions_total";
/// Time to commit one target transaction, in seconds.
pub const APPLY_SECONDS: &str = "leadsync_apply_seconds";
/// 1 while paused.
pub const PAUSED: &str = "leadsync_paused";
/// Rows the first load wrote, by target table.
pub const SNAPSHOT_ROWS_TOTAL: &str = "leadsync_snapshot_rows_total";
/// Gauge: source rows the first load has read so far, by target `table`.
pub const FIRST_LOAD_ROWS: &str = "leadsync_first_load_rows";
/// Gauge: source rows the first load reads in all, by target `table`.
pub const FIRST_LOAD_ROWS_EXPECTED: &str = "leadsync_first_load_rows_expected";
/// Gauge: seconds the first load still needs at its rate so far.
pub const FIRST_LOAD_ETA_SECONDS: &str = "leadsync_first_load_eta_seconds";
/// Changes parked in `leadsync.dead_letters`.
pub const DEAD_LETTERS_TOTAL: &str = "leadsync_dead_letters_total";
/// Gauge: dead letters pending in `leadsync.dead_letters`, from every source (first load,
/// stream, reverse sync, retries), as the database holds them.
pub const DEAD_LETTERS_PENDING: &str = "leadsync_dead_letters_pending";
/// Errors, by `kind` (`bad_row`, `transient`, `fatal`).
pub const ERRORS_TOTAL: &str = "leadsync_errors_total";
/// WAL the slot keeps on the server (server WAL position minus the slot's restart LSN).
pub const SLOT_RETAINED_BYTES: &str = "leadsync_slot_retained_bytes";
/// 1 while this instance waits as a standby.
pub const STANDBY: &str = "leadsync_standby";
/// 1 while this instance is in the failed state (up, applying nothing, waiting for a fix).
pub const FAILED: &str = "leadsync_failed";

/// Label names.
pub const TABLE: &str = "table";
pub const OP: &str = "op";
pub const KIND: &str = "kind";

/// Upper bounds of the [`APPLY_SECONDS`] buckets: a target commit takes from about a
/// millisecond (one small transaction) to seconds (a large batch under load); anything past
/// 10 s lands in `+Inf`, which is itself the signal.
pub const APPLY_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The exporter configuration leadsync uses, without a listener of its own: the daemon
/// serves `/metrics` itself beside `/healthz`, `/readyz` and `/status` (see `crate::http`).
pub fn prometheus_builder()
-> Result<metrics_exporter_prometheus::PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        // The names above already follow the conventions; this only guards a future name
        // that forgets `_total` or its unit.
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(APPLY_SECONDS.to_owned()),
            APPLY_SECONDS_BUCKETS,
        )
}

/// Installs the process-wide recorder and describes every metric. Call once, early in
/// `run`; the handle renders the scrape text. Fails if a recorder is already installed.
pub fn install_recorder()
-> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = prometheus_builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

/// Registers help text and units for every metric with the current recorder, and sets the
/// unlabelled ones to zero so they are scraped (and `rate()` works) before the first event.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Source WAL position minus the processed LSN."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest source transaction not yet applied; 0 when caught up."
    );
    describe_gauge!(
        APPLIED_LSN,
        "The processed LSN as a number: every source change up to it is committed on the target."
    );
    describe_counter!(
        CHANGES_TOTAL,
        "Source row changes applied, by table and op."
    );
    describe_counter!(TRANSACTIONS_TOTAL, "Target transactions committed.");
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time to commit one target transaction."
    );
    describe_gauge!(PAUSED, "1 while paused by the operator.");
    describe_counter!(
        SNAPSHOT_ROWS_TOTAL,
        "Rows the first load wrote, by target table."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Changes parked in leadsync.dead_letters."
    );
    describe_gauge!(
        DEAD_LETTERS_PENDING,
        "Dead letters pending in leadsync.dead_letters, from every source (the first load \
         included): what makes a cutover NO-GO."
    );
    describe_counter!(ERRORS_TOTAL, "Errors, by kind (bad_row, transient, fatal).");
    describe_gauge!(
        SLOT_RETAINED_BYTES,
        Unit::Bytes,
        "WAL the slot keeps on the server: server WAL position minus the slot's restart LSN."
    );
    describe_gauge!(STANDBY, "1 while this instance waits as a standby.");
    describe_gauge!(
        FIRST_LOAD_ROWS,
        "Source rows the first load has read so far, by target table."
    );
    describe_gauge!(
        FIRST_LOAD_ROWS_EXPECTED,
        "Source rows the first load reads in all, by target table."
    );
    describe_gauge!(
        FIRST_LOAD_ETA_SECONDS,
        Unit::Seconds,
        "Time the first load still needs at its rate so far."
    );
    describe_gauge!(
        FAILED,
        "1 while this instance is failed: up, applying nothing, waiting for a fix (see /status)."
    );

    metrics::counter!(TRANSACTIONS_TOTAL).absolute(0);
    metrics::counter!(DEAD_LETTERS_TOTAL).absolute(0);
    metrics::gauge!(PAUSED).set(0.0);
    metrics::gauge!(STANDBY).set(0.0);
    metrics::gauge!(FAILED).set(0.0);
}
