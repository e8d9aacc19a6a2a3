//! Sync triggers left from a trigger-based migration, such as the guide's Steps 1 to 3:
//! triggers on the legacy or target tables whose function writes `customers` or `contacts`
//! (or their custom-field values, as the guide's Step 2 does).
//! leadsync does their work; with them in place each side's change would come back from the
//! other, so `setup` refuses while they exist and `run` warns about them.

use std::fmt;

use tokio_postgres::Client;

use crate::config::Settings;
use crate::schema::{PUBLISHED_LEGACY_TABLES, TARGET_TABLES};

/// A trigger function's source writes `customers`, `contacts` or their custom-field values:
/// `INSERT INTO`, `UPDATE` (optionally `ONLY`) or `DELETE FROM`, then the table name,
/// optionally schema-qualified and quoted. `\m`/`\M` are word boundaries, so
/// `contacts_archive` does not match, nor does `DO UPDATE SET`. Dynamic SQL (`EXECUTE`) is
/// not seen, and a statement in a comment counts as one.
const WRITES_CUSTOMERS_OR_CONTACTS: &str = r#"\m(insert\s+into|update|delete\s+from)\s+(only\s+)?("?\w+"?\s*\.\s*)?"?(customers|contacts|customer_custom_fields|contact_custom_fields)\M"#;

/// A trigger that writes `customers` or `contacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTrigger {
    /// Schema of the table it is on.
    pub schema: String,
    /// The table it is on.
    pub table: String,
    /// The trigger's name.
    pub trigger: String,
    /// Its function, schema-qualified.
    pub function: String,
    /// `DROP TRIGGER … ON …;`, with names quoted by the server where they need it.
    pub drop_sql: String,
}

impl fmt::Display for SyncTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` on `{}.{}` (function `{}`)",
            self.trigger, self.schema, self.table, self.function
        )
    }
}

/// Every non-internal trigger on the legacy tables (in `source.schema`) and the target
/// tables (in `target.schema`) whose function writes `customers` or `contacts`, disabled
/// ones included (enabling one again would start the loop). Ordered by table and name.
pub async fn sync_triggers(
    client: &Client,
    settings: &Settings,
) -> Result<Vec<SyncTrigger>, tokio_postgres::Error> {
    let legacy: Vec<&str> = PUBLISHED_LEGACY_TABLES.to_vec();
    let target: Vec<&str> = TARGET_TABLES.to_vec();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text,
                    pn.nspname::text || '.' || p.proname::text,
                    format('DROP TRIGGER %I ON %I.%I;', t.tgname, n.nspname, c.relname)
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_proc p ON p.oid = t.tgfoid
             JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE NOT t.tgisinternal
               AND ((n.nspname = $1 AND c.relname = ANY($2::text[]))
                 OR (n.nspname = $3 AND c.relname = ANY($4::text[])))
               AND p.prosrc ~* $5
             ORDER BY 1, 2, 3",
            &[
                &settings.source.schema,
                &legacy,
                &settings.target.schema,
                &target,
                &WRITES_CUSTOMERS_OR_CONTACTS,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SyncTrigger {
            schema: r.get(0),
            table: r.get(1),
            trigger: r.get(2),
            function: r.get(3),
            drop_sql: r.get(4),
        })
        .collect())
}
