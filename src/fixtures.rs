//! The legacy schema and a deterministic demo-data generator, for the demo, the tests and
//! the benchmarks.

use tokio_postgres::Client;

/// The legacy contact-centric schema (with a stand-in `auth` schema), as the product expects
/// to find it.
pub const LEGACY_SCHEMA: &str = include_str!("../fixtures/legacy_schema.sql");

const DEMO_DATA: &str = include_str!("../fixtures/demo_data.sql");

/// Field names whose values belong to a lead or an appointment in the demo data; every other
/// field stays a contact-level field.
const DEMO_FIELD_CONTEXTS: &str = "
UPDATE custom_fields SET context_type = CASE name
    WHEN 'system_size' THEN 'lead'
    WHEN 'utility' THEN 'lead'
    WHEN 'preferred_time' THEN 'appointment'
    ELSE 'contact' END
WHERE context_type IS DISTINCT FROM CASE name
    WHEN 'system_size' THEN 'lead'
    WHEN 'utility' THEN 'lead'
    WHEN 'preferred_time' THEN 'appointment'
    ELSE 'contact' END";

/// Creates the legacy tables (idempotent).
pub async fn load_legacy_schema(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(LEGACY_SCHEMA).await
}

/// The generator's SQL for `contacts` contacts.
pub fn demo_data_sql(contacts: u64) -> String {
    DEMO_DATA.replace("{N}", &contacts.to_string())
}

/// Inserts `contacts` generated contacts with their workspaces, users, field definitions and
/// values, in one transaction. The same count always produces the same rows.
pub async fn generate_demo_data(
    client: &Client,
    contacts: u64,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("BEGIN;\n{}\nCOMMIT;", demo_data_sql(contacts)))
        .await
}

/// Gives some demo fields a lead or appointment context. Needs the `context_type` column
/// that `leadsync setup` adds.
pub async fn assign_demo_field_contexts(client: &Client) -> Result<u64, tokio_postgres::Error> {
    client.execute(DEMO_FIELD_CONTEXTS, &[]).await
}

/// Cuts every legacy value that would not fit its target column (`project::LENGTH_LIMITS`)
/// to the column's width, so that no dead letter exists unless a test or bench makes one,
/// and SQL that cannot park a row (the guide's) can run at all. `tags` is left alone: the
/// product comes from the rules, not from its length. Returns the contacts changed.
pub async fn shorten_misfits(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let limits: Vec<(&str, usize)> = crate::project::LENGTH_LIMITS
        .iter()
        .filter(|(_, column, _)| *column != "tags")
        .map(|&(_, column, limit)| (column, limit))
        .collect();
    let set: Vec<String> = limits
        .iter()
        .map(|(c, n)| format!("{c} = left({c}, {n})"))
        .collect();
    let too_long: Vec<String> = limits
        .iter()
        .map(|(c, n)| format!("char_length({c}) > {n}"))
        .collect();
    client
        .execute(
            &format!(
                "UPDATE contacts SET {} WHERE {}",
                set.join(", "),
                too_long.join(" OR ")
            ),
            &[],
        )
        .await
}
