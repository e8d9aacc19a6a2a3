//! The statements the apply stage runs: one multi-row statement per table and kind of
//! write, fed with arrays (`unnest`), so a chunk of thousands of changes costs a handful of
//! round trips.

use crate::db::quote_ident;
use crate::project::{CONTACT_COLUMNS, ValueTable};

/// A column of a batched statement: its name, the array type its parameter has, and the
/// expression that turns the unnested value into the column's type.
struct Column {
    name: &'static str,
    param_type: &'static str,
}

const fn col(name: &'static str, param_type: &'static str) -> Column {
    Column { name, param_type }
}

const CUSTOMER_COLUMNS: &[Column] = &[
    col("cst_id", "uuid"),
    col("workspace_id", "uuid"),
    col("firstname", "text"),
    col("lastname", "text"),
    col("email", "text"),
    col("phone1", "text"),
    col("phone2", "text"),
    col("address1", "text"),
    col("address2", "text"),
    col("city", "text"),
    col("state", "text"),
    col("zip", "text"),
    col("country", "text"),
    col("dateadded", "timestamp"),
    col("lastchanged", "timestamp"),
    col("created_at", "timestamp"),
    col("updated_at", "timestamp"),
    col("created_by", "uuid"),
    col("migrated_from_contact_id", "uuid"),
    col("deleted_at", "timestamp"),
];

const LEAD_COLUMNS: &[Column] = &[
    col("id", "uuid"),
    col("customer_id", "uuid"),
    col("workspace_id", "uuid"),
    col("productid", "text"),
    col("source", "text"),
    col("sourcesubdescr", "text"),
    col("disposition", "text"),
    col("stg_id", "int4"),
    col("priority", "int8"),
    col("entrydate", "timestamp"),
    col("lastchangedon", "timestamp"),
    col("created_at", "timestamp"),
    col("updated_at", "timestamp"),
    col("created_by", "uuid"),
    col("migrated_from_contact_id", "uuid"),
    col("deleted_at", "timestamp"),
];

const APPOINTMENT_COLUMNS: &[Column] = &[
    col("id", "uuid"),
    col("lead_id", "uuid"),
    col("workspace_id", "uuid"),
    col("apptdate", "timestamp"),
    col("disposition", "text"),
    col("apptset", "bool"),
    col("verified", "bool"),
    col("confirmed", "bool"),
    col("setdate", "timestamp"),
    col("verifieddate", "timestamp"),
    col("confirmeddate", "timestamp"),
    col("lastchangeddate", "timestamp"),
    col("created_at", "timestamp"),
    col("updated_at", "timestamp"),
    col("created_by", "uuid"),
    col("migrated_from_contact_id", "uuid"),
    col("deleted_at", "timestamp"),
];

/// The projected columns of `customers`, `leads` or `appointments` without `deleted_at`,
/// in the order their projected rows list them.
pub fn target_columns(table: &str) -> Vec<&'static str> {
    let columns = match table {
        "customers" => CUSTOMER_COLUMNS,
        "leads" => LEAD_COLUMNS,
        "appointments" => APPOINTMENT_COLUMNS,
        other => panic!("`{other}` is not a projected parent table"),
    };
    columns
        .iter()
        .map(|c| c.name)
        .filter(|name| *name != "deleted_at")
        .collect()
}

/// The columns of a custom-field value table, in [`crate::project::RoutedValue`] order.
pub fn value_columns(table: ValueTable) -> [&'static str; 6] {
    [
        table.parent_column(),
        "field_id",
        "value",
        "created_at",
        "updated_at",
        "created_by",
    ]
}

/// `INSERT … SELECT FROM unnest(…) ON CONFLICT (key) DO UPDATE` that only rewrites rows
/// whose values differ and, with `owned`, only rows leadsync owns.
fn upsert(table: &str, key: &str, columns: &[Column], owned: bool) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.param_type))
        .collect();
    let key_columns: Vec<&str> = key.split(", ").collect();
    let updated: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !key_columns.contains(n))
        .collect();
    let set: Vec<String> = updated
        .iter()
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    let old: Vec<String> = updated.iter().map(|n| format!("t.{n}")).collect();
    let new: Vec<String> = updated.iter().map(|n| format!("EXCLUDED.{n}")).collect();
    let owned = if owned {
        "t.migrated_from_contact_id IS NOT NULL AND "
    } else {
        ""
    };
    format!(
        "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM unnest({params}) AS u({cols}) \
         ON CONFLICT ({key}) DO UPDATE SET {set} \
         WHERE {owned}({old}) IS DISTINCT FROM ({new})",
        cols = names.join(", "),
        params = params.join(", "),
        set = set.join(", "),
        old = old.join(", "),
        new = new.join(", "),
    )
}

/// Every statement, with the schema names filled in.
#[derive(Debug, Clone)]
pub struct Sql {
    pub upsert_customers: String,
    pub upsert_leads: String,
    pub upsert_appointments: String,
    /// `(id[], deleted_at[])`: mark live owned rows deleted.
    pub mark_customers: String,
    pub mark_leads: String,
    pub mark_appointments: String,
    /// `(id[])`: delete owned rows.
    pub delete_customers: String,
    pub delete_leads: String,
    pub delete_appointments: String,
    /// Per value table: `(parent[], field[], value[], created_at[], updated_at[], created_by[])`.
    pub upsert_values: [String; 3],
    /// Per value table: `(parent[], field[])`.
    pub delete_values: [String; 3],
    pub upsert_mirror_contacts: String,
    pub delete_mirror_contacts: String,
    pub upsert_mirror_values: String,
    pub delete_mirror_values: String,
    pub select_mirror_contacts: String,
    pub select_mirror_values: String,
}

impl Sql {
    /// The statements for target tables in `target`.
    pub fn new(target: &str) -> Sql {
        let t = quote_ident(target);
        let table = |name: &str| format!("{t}.{name}");
        let mark = |name: &str, key: &str| {
            format!(
                "UPDATE {} AS t SET deleted_at = d.at FROM unnest($1::uuid[], $2::timestamp[]) \
                 AS d(id, at) WHERE t.{key} = d.id AND t.migrated_from_contact_id IS NOT NULL \
                 AND t.deleted_at IS NULL",
                table(name)
            )
        };
        let delete = |name: &str, key: &str| {
            format!(
                "DELETE FROM {} WHERE {key} = ANY($1::uuid[]) \
                 AND migrated_from_contact_id IS NOT NULL",
                table(name)
            )
        };
        let value_upsert = |v: ValueTable| {
            let parent = v.parent_column();
            format!(
                "INSERT INTO {} AS t ({parent}, field_id, value, created_at, updated_at, created_by) \
                 SELECT p, f, v::jsonb, ca, ua, cb FROM unnest($1::uuid[], $2::uuid[], $3::text[], \
                 $4::timestamp[], $5::timestamp[], $6::uuid[]) AS u(p, f, v, ca, ua, cb) \
                 ON CONFLICT ({parent}, field_id) DO UPDATE SET value = EXCLUDED.value, \
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
                 created_by = EXCLUDED.created_by \
                 WHERE (t.value, t.created_at, t.updated_at, t.created_by) IS DISTINCT FROM \
                 (EXCLUDED.value, EXCLUDED.created_at, EXCLUDED.updated_at, EXCLUDED.created_by)",
                table(v.table())
            )
        };
        let value_delete = |v: ValueTable| {
            format!(
                "DELETE FROM {} AS t USING unnest($1::uuid[], $2::uuid[]) AS d(p, f) \
                 WHERE t.{} = d.p AND t.field_id = d.f",
                table(v.table()),
                v.parent_column()
            )
        };
        let mirror_params: Vec<String> = CONTACT_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
            .collect();
        let mirror_cols = CONTACT_COLUMNS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ");
        let mirror_set: Vec<String> = CONTACT_COLUMNS[1..]
            .iter()
            .map(|(c, _)| format!("{c} = EXCLUDED.{c}"))
            .collect();
        Sql {
            upsert_customers: upsert(&table("customers"), "cst_id", CUSTOMER_COLUMNS, true),
            upsert_leads: upsert(&table("leads"), "id", LEAD_COLUMNS, true),
            upsert_appointments: upsert(&table("appointments"), "id", APPOINTMENT_COLUMNS, true),
            mark_customers: mark("customers", "cst_id"),
            mark_leads: mark("leads", "id"),
            mark_appointments: mark("appointments", "id"),
            delete_customers: delete("customers", "cst_id"),
            delete_leads: delete("leads", "id"),
            delete_appointments: delete("appointments", "id"),
            upsert_values: ValueTable::ALL.map(value_upsert),
            delete_values: ValueTable::ALL.map(value_delete),
            upsert_mirror_contacts: format!(
                "INSERT INTO leadsync.contacts ({mirror_cols}) SELECT * FROM unnest({}) \
                 ON CONFLICT (id) DO UPDATE SET {}",
                mirror_params.join(", "),
                mirror_set.join(", ")
            ),
            delete_mirror_contacts: "DELETE FROM leadsync.contacts WHERE id = ANY($1::uuid[])"
                .into(),
            upsert_mirror_values: "INSERT INTO leadsync.field_values \
                 (contact_id, field_id, value, created_at, updated_at, created_by) \
                 SELECT c, f, v::jsonb, ca, ua, cb FROM unnest($1::uuid[], $2::uuid[], $3::text[], \
                 $4::timestamp[], $5::timestamp[], $6::uuid[]) AS u(c, f, v, ca, ua, cb) \
                 ON CONFLICT (contact_id, field_id) DO UPDATE SET value = EXCLUDED.value, \
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
                 created_by = EXCLUDED.created_by"
                .into(),
            delete_mirror_values: "DELETE FROM leadsync.field_values AS v \
                 USING unnest($1::uuid[], $2::uuid[]) AS d(c, f) \
                 WHERE v.contact_id = d.c AND v.field_id = d.f"
                .into(),
            select_mirror_contacts: format!(
                "SELECT {} FROM leadsync.contacts m WHERE id = ANY($1::uuid[])",
                crate::project::contact_select("m")
            ),
            select_mirror_values: "SELECT contact_id, field_id, value::text, created_at, \
                 updated_at, created_by FROM leadsync.field_values \
                 WHERE contact_id = ANY($1::uuid[])"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_updates_only_owned_rows_that_differ() {
        let sql = Sql::new("public");
        let s = &sql.upsert_customers;
        assert!(s.starts_with("INSERT INTO \"public\".customers AS t (cst_id, workspace_id"));
        assert!(s.contains("$20::timestamp[]"));
        assert!(
            s.contains("ON CONFLICT (cst_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id")
        );
        assert!(!s.contains("cst_id = EXCLUDED.cst_id"));
        assert!(s.contains("WHERE t.migrated_from_contact_id IS NOT NULL AND (t.workspace_id"));
        assert!(sql.upsert_values[1].contains("\"public\".lead_custom_fields"));
        assert!(sql.delete_values[2].contains("t.appointment_id = d.p"));
    }
}
