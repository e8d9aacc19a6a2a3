//! Metric names, defined once. Labels stay few: `table`, `op`, `kind` — never a row id.

/// Rows the first load wrote, by target table.
pub const SNAPSHOT_ROWS_TOTAL: &str = "leadsync_snapshot_rows_total";
