//! The DDL `leadsync setup` installs: the guide's Steps 1-4 as SPEC §2 fixes them, and the
//! daemon's own `leadsync` schema. Every statement is idempotent (`IF NOT EXISTS`, or a
//! catalog check for policies), so a second run changes nothing.

use crate::db::quote_ident;

/// The schema holding leadsync's own state.
pub const STATE_SCHEMA: &str = "leadsync";

/// leadsync's own tables in [`STATE_SCHEMA`], in the order `teardown` drops them (by name:
/// never by dropping the schema with CASCADE, which would take anything else with it).
pub const STATE_TABLES: [&str; 14] = [
    "load_steps",
    "samples",
    "load_guard",
    "load_set_aside",
    "origins",
    "reverse_queue",
    "reverse_writes",
    "resync_requests",
    "deferred_constraints",
    "fields",
    "field_values",
    "contacts",
    "dead_letters",
    "sync_state",
];

/// The six target tables, parents before children.
pub const TARGET_TABLES: [&str; 6] = [
    "customers",
    "leads",
    "appointments",
    "customer_custom_fields",
    "lead_custom_fields",
    "appointment_custom_fields",
];

/// The legacy tables the publication carries (plus `customers` with reverse sync).
pub const PUBLISHED_LEGACY_TABLES: [&str; 3] =
    ["contacts", "contact_custom_fields", "custom_fields"];

/// Steps 1-3: tables and indexes. `{t}` is the target schema, `{s}` the legacy schema.
const TARGET_TABLES_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS {t}.customers (
    cst_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES {s}.workspaces(id) ON DELETE CASCADE,
    firstname VARCHAR(255),
    lastname VARCHAR(255),
    email VARCHAR(255),
    phone1 VARCHAR(20),
    phone2 VARCHAR(20),
    address1 TEXT,
    address2 TEXT,
    city VARCHAR(100),
    state VARCHAR(50),
    zip VARCHAR(20),
    country VARCHAR(100) DEFAULT 'US',
    dateadded TIMESTAMP DEFAULT NOW(),
    lastchanged TIMESTAMP DEFAULT NOW(),
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    migrated_from_contact_id UUID,
    migration_timestamp TIMESTAMP DEFAULT NOW(),
    deleted_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS {t}.leads (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id UUID NOT NULL REFERENCES {t}.customers(cst_id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL REFERENCES {s}.workspaces(id) ON DELETE CASCADE,
    productid VARCHAR(100),
    source VARCHAR(255),
    sourcesubdescr TEXT,
    disposition VARCHAR(100),
    stg_id INTEGER,
    priority INTEGER DEFAULT 3,
    lead_score DECIMAL(5,2),
    entrydate TIMESTAMP DEFAULT NOW(),
    apptdate TIMESTAMP,
    apptset BOOLEAN DEFAULT FALSE,
    verified BOOLEAN DEFAULT FALSE,
    confirmed BOOLEAN DEFAULT FALSE,
    issued BOOLEAN DEFAULT FALSE,
    sat BOOLEAN DEFAULT FALSE,
    sold BOOLEAN DEFAULT FALSE,
    everset BOOLEAN DEFAULT FALSE,
    eververified BOOLEAN DEFAULT FALSE,
    everconfirmed BOOLEAN DEFAULT FALSE,
    lastchangedon TIMESTAMP DEFAULT NOW(),
    lastchangedby VARCHAR(255),
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    migrated_from_contact_id UUID,
    migration_timestamp TIMESTAMP DEFAULT NOW(),
    deleted_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS {t}.appointments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id UUID NOT NULL REFERENCES {t}.leads(id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL REFERENCES {s}.workspaces(id) ON DELETE CASCADE,
    apptdate TIMESTAMP NOT NULL,
    setbyname VARCHAR(255),
    verifiedbyname VARCHAR(255),
    confirmedbyname VARCHAR(255),
    disposition VARCHAR(100),
    apptset BOOLEAN DEFAULT FALSE,
    verified BOOLEAN DEFAULT FALSE,
    confirmed BOOLEAN DEFAULT FALSE,
    issued BOOLEAN DEFAULT FALSE,
    sat BOOLEAN DEFAULT FALSE,
    sold BOOLEAN DEFAULT FALSE,
    setdate TIMESTAMP,
    verifieddate TIMESTAMP,
    confirmeddate TIMESTAMP,
    lastchangeddate TIMESTAMP DEFAULT NOW(),
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    migrated_from_contact_id UUID,
    migration_timestamp TIMESTAMP DEFAULT NOW(),
    deleted_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS {t}.customer_custom_fields (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id UUID NOT NULL REFERENCES {t}.customers(cst_id) ON DELETE CASCADE,
    field_id UUID NOT NULL REFERENCES {s}.custom_fields(id) ON DELETE CASCADE,
    value JSONB,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    UNIQUE(customer_id, field_id)
);

CREATE TABLE IF NOT EXISTS {t}.lead_custom_fields (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id UUID NOT NULL REFERENCES {t}.leads(id) ON DELETE CASCADE,
    field_id UUID NOT NULL REFERENCES {s}.custom_fields(id) ON DELETE CASCADE,
    value JSONB,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    UNIQUE(lead_id, field_id)
);

CREATE TABLE IF NOT EXISTS {t}.appointment_custom_fields (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    appointment_id UUID NOT NULL REFERENCES {t}.appointments(id) ON DELETE CASCADE,
    field_id UUID NOT NULL REFERENCES {s}.custom_fields(id) ON DELETE CASCADE,
    value JSONB,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    created_by UUID REFERENCES auth.users(id),
    updated_by UUID REFERENCES auth.users(id),
    UNIQUE(appointment_id, field_id)
);

ALTER TABLE {s}.custom_fields
    ADD COLUMN IF NOT EXISTS context_type VARCHAR(20) DEFAULT 'contact'
        CHECK (context_type IN ('contact', 'lead', 'appointment')),
    ADD COLUMN IF NOT EXISTS context_config JSONB DEFAULT '{}';

CREATE INDEX IF NOT EXISTS idx_customers_workspace_id ON {t}.customers(workspace_id);
CREATE INDEX IF NOT EXISTS idx_customers_email ON {t}.customers(email) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_customers_phone1 ON {t}.customers(phone1) WHERE phone1 IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_customers_name ON {t}.customers(firstname, lastname)
    WHERE firstname IS NOT NULL OR lastname IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_customers_lastchanged ON {t}.customers(lastchanged DESC);
CREATE INDEX IF NOT EXISTS idx_customers_migrated_from ON {t}.customers(migrated_from_contact_id)
    WHERE migrated_from_contact_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_leads_customer_id ON {t}.leads(customer_id);
CREATE INDEX IF NOT EXISTS idx_leads_workspace_id ON {t}.leads(workspace_id);
CREATE INDEX IF NOT EXISTS idx_leads_productid ON {t}.leads(productid) WHERE productid IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_leads_source ON {t}.leads(source) WHERE source IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_leads_disposition ON {t}.leads(disposition) WHERE disposition IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_leads_stg_id ON {t}.leads(stg_id) WHERE stg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_leads_lastchangedon ON {t}.leads(lastchangedon DESC);
-- One migrated lead and one migrated appointment per contact (SPEC §2).
CREATE UNIQUE INDEX IF NOT EXISTS idx_leads_migrated_from ON {t}.leads(migrated_from_contact_id)
    WHERE migrated_from_contact_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_appointments_lead_id ON {t}.appointments(lead_id);
CREATE INDEX IF NOT EXISTS idx_appointments_workspace_id ON {t}.appointments(workspace_id);
CREATE INDEX IF NOT EXISTS idx_appointments_apptdate ON {t}.appointments(apptdate);
CREATE INDEX IF NOT EXISTS idx_appointments_disposition ON {t}.appointments(disposition)
    WHERE disposition IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS idx_appointments_migrated_from
    ON {t}.appointments(migrated_from_contact_id) WHERE migrated_from_contact_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_customer_custom_fields_customer_id ON {t}.customer_custom_fields(customer_id);
CREATE INDEX IF NOT EXISTS idx_customer_custom_fields_field_id ON {t}.customer_custom_fields(field_id);
CREATE INDEX IF NOT EXISTS idx_lead_custom_fields_lead_id ON {t}.lead_custom_fields(lead_id);
CREATE INDEX IF NOT EXISTS idx_lead_custom_fields_field_id ON {t}.lead_custom_fields(field_id);
CREATE INDEX IF NOT EXISTS idx_appointment_custom_fields_appointment_id
    ON {t}.appointment_custom_fields(appointment_id);
CREATE INDEX IF NOT EXISTS idx_appointment_custom_fields_field_id
    ON {t}.appointment_custom_fields(field_id);

ALTER TABLE {t}.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t}.leads ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t}.appointments ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t}.customer_custom_fields ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t}.lead_custom_fields ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t}.appointment_custom_fields ENABLE ROW LEVEL SECURITY;
"#;

/// leadsync's own state. Dead letters keep the full payload of a rejected change.
const STATE_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS leadsync;

COMMENT ON SCHEMA leadsync IS 'leadsync change data capture: checkpoints and dead letters';

-- One row per slot: what the daemon must remember across restarts besides its LSN (which
-- the replication origin of the same name holds, committed with the writes).
CREATE TABLE IF NOT EXISTS leadsync.sync_state (
    slot_name TEXT PRIMARY KEY,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    phase TEXT NOT NULL DEFAULT 'new'
        CHECK (phase IN ('new', 'backfill', 'streaming')),
    backfill_lsn PG_LSN,
    backfill_started_at TIMESTAMPTZ,
    backfill_finished_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A failure no retry fixes, recorded by the instance that met it so that standbys wait
    -- instead of failing the same way; cleared by `leadsync ctl retry` or a restart.
    failure TEXT,
    failed_at TIMESTAMPTZ,
    failed_by TEXT
);

ALTER TABLE leadsync.sync_state
    ADD COLUMN IF NOT EXISTS failure TEXT,
    ADD COLUMN IF NOT EXISTS failed_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS failed_by TEXT;

-- Rows the target rejected, with everything needed to replay them.
CREATE TABLE IF NOT EXISTS leadsync.dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name TEXT NOT NULL,
    lsn PG_LSN,
    source_table TEXT NOT NULL,
    operation TEXT NOT NULL,
    contact_id UUID,
    key JSONB NOT NULL,
    payload JSONB NOT NULL,
    error TEXT NOT NULL,
    sqlstate TEXT,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'replayed', 'discarded')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,
    -- leadsync's state lacks the change (it could not be read): only a re-read of the
    -- contact from the source resolves it.
    state_incomplete BOOLEAN NOT NULL DEFAULT FALSE
);

-- Columns added since an older setup, added only where missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'leadsync.dead_letters'::regclass
                   AND attname = 'state_incomplete' AND NOT attisdropped) THEN
        ALTER TABLE leadsync.dead_letters
            ADD COLUMN state_incomplete BOOLEAN NOT NULL DEFAULT FALSE;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS dead_letters_pending ON leadsync.dead_letters (contact_id)
    WHERE status = 'pending';

-- The source state as of the processed LSN, kept in the same transactions as the target
-- writes: what pgoutput does not resend (unchanged TOAST values), values whose parent does
-- not exist yet, and the field contexts that route them.
CREATE TABLE IF NOT EXISTS leadsync.contacts (
    id UUID PRIMARY KEY,
    workspace_id UUID NOT NULL,
    firstname TEXT,
    lastname TEXT,
    email TEXT,
    phone_number TEXT,
    st_address TEXT,
    city TEXT,
    state TEXT,
    zip TEXT,
    lead_status TEXT,
    lead_source TEXT,
    tags TEXT,
    appointment_status_id BIGINT,
    appointment_result_id BIGINT,
    appointment_date TIMESTAMP,
    priority BIGINT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    created_by UUID
);

-- As wide as a legacy integer column may grow (state made by an older setup had INTEGER).
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = 'leadsync.contacts'::regclass AND attname = 'priority')
       <> 'bigint'::regtype THEN
        ALTER TABLE leadsync.contacts
            ALTER COLUMN appointment_status_id TYPE BIGINT,
            ALTER COLUMN appointment_result_id TYPE BIGINT,
            ALTER COLUMN priority TYPE BIGINT;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS leadsync.field_values (
    contact_id UUID NOT NULL,
    field_id UUID NOT NULL,
    value JSONB,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    created_by UUID,
    PRIMARY KEY (contact_id, field_id)
);

CREATE INDEX IF NOT EXISTS field_values_field_id ON leadsync.field_values (field_id);

CREATE TABLE IF NOT EXISTS leadsync.fields (
    id UUID PRIMARY KEY,
    context_type TEXT
);

-- Foreign keys of the target tables into legacy tables that the first load set aside
-- (dropped in a short transaction of their own before its snapshot) and adds back when it
-- commits; recorded here so that a crash in between never loses one.
-- In structured form: the runtime role can write this table, so leadsync never runs text
-- from it; it rebuilds each key from these names, quoted, and only for the target tables.
CREATE TABLE IF NOT EXISTS leadsync.deferred_constraints (
    table_name TEXT NOT NULL,
    constraint_name TEXT NOT NULL,
    columns TEXT[],
    referenced_schema TEXT,
    referenced_table TEXT,
    referenced_columns TEXT[],
    on_delete TEXT,
    on_update TEXT,
    -- What an older leadsync recorded instead (SQL text): shown, never run.
    definition TEXT,
    PRIMARY KEY (table_name, constraint_name)
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute
                   WHERE attrelid = 'leadsync.deferred_constraints'::regclass
                   AND attname = 'columns' AND NOT attisdropped) THEN
        ALTER TABLE leadsync.deferred_constraints
            ALTER COLUMN definition DROP NOT NULL,
            ADD COLUMN columns TEXT[],
            ADD COLUMN referenced_schema TEXT,
            ADD COLUMN referenced_table TEXT,
            ADD COLUMN referenced_columns TEXT[],
            ADD COLUMN on_delete TEXT,
            ADD COLUMN on_update TEXT;
    END IF;
END
$$;

-- `leadsync resync` requests, carried out by the running daemon.
CREATE TABLE IF NOT EXISTS leadsync.resync_requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id UUID,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done')),
    contacts BIGINT NOT NULL DEFAULT 0,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);

-- What reverse sync wrote to each contact, column by column ({"email": "…"}): a contact
-- column that still holds what reverse sync wrote is an earlier customer edit carried back,
-- not a later legacy change, so a later customer edit of that column still wins over it.
CREATE TABLE IF NOT EXISTS leadsync.reverse_writes (
    contact_id UUID PRIMARY KEY,
    row_xmin XID NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    columns JSONB NOT NULL DEFAULT '{}'
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'leadsync.reverse_writes'::regclass
                   AND attname = 'columns' AND NOT attisdropped) THEN
        ALTER TABLE leadsync.reverse_writes ADD COLUMN columns JSONB NOT NULL DEFAULT '{}';
    END IF;
END
$$;

-- Customer edits waiting to be written back to their contact, column by column:
-- {"email": {"value": "…", "base": "…"}}, `base` being what the contact held, as far as
-- leadsync had processed, when the edit was made. They wait here while the contact's row is
-- locked by a legacy transaction (the forward stream never waits on it), and are written as
-- soon as it is free; a column whose contact value no longer equals `base` changed later on
-- the legacy side, and that later change wins.
CREATE TABLE IF NOT EXISTS leadsync.reverse_queue (
    contact_id UUID PRIMARY KEY,
    lsn PG_LSN NOT NULL,
    columns JSONB NOT NULL,
    queued_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The migration's history, for `leadsync report --html`: a sample of the active daemon's
-- lag and throughput every metrics.history_every_seconds, kept 90 days.
CREATE TABLE IF NOT EXISTS leadsync.samples (
    slot_name TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    state TEXT NOT NULL,
    lag_seconds DOUBLE PRECISION NOT NULL,
    lag_bytes BIGINT,
    -- Changes applied since the previous sample, and over how many seconds.
    changes BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (slot_name, at)
);

-- The steps of the last first load and how long each took.
CREATE TABLE IF NOT EXISTS leadsync.load_steps (
    slot_name TEXT NOT NULL,
    position INT NOT NULL,
    step TEXT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (slot_name, position)
);
"#;

/// The row-level-security policies: select, insert, update and delete by workspace
/// membership for every target table. `(table, name, command, predicate)`.
fn policies() -> Vec<(&'static str, String, &'static str, String)> {
    let member = "workspace_id IN (SELECT workspace_id FROM {s}.workspace_users \
                  WHERE user_id = auth.uid())";
    let via = |column: &str, parent: &str, parent_key: &str| {
        format!("{column} IN (SELECT {parent_key} FROM {{t}}.{parent} WHERE {member})")
    };
    let tables: [(&str, &str, String); 6] = [
        ("customers", "customers", member.to_owned()),
        ("leads", "leads", member.to_owned()),
        ("appointments", "appointments", member.to_owned()),
        (
            "customer_custom_fields",
            "customer custom fields",
            via("customer_id", "customers", "cst_id"),
        ),
        (
            "lead_custom_fields",
            "lead custom fields",
            via("lead_id", "leads", "id"),
        ),
        (
            "appointment_custom_fields",
            "appointment custom fields",
            via("appointment_id", "appointments", "id"),
        ),
    ];
    let mut out = Vec::new();
    for (table, noun, predicate) in tables {
        for (verb, command) in [
            ("view", "SELECT"),
            ("insert", "INSERT"),
            ("update", "UPDATE"),
            ("delete", "DELETE"),
        ] {
            let name = format!("Users can {verb} {noun} in their workspace");
            out.push((table, name, command, predicate.clone()));
        }
    }
    out
}

/// Fills in the schema names.
fn with_schemas(sql: &str, target: &str, source: &str) -> String {
    sql.replace("{t}", &quote_ident(target))
        .replace("{s}", &quote_ident(source))
}

/// The target schema's DDL for `target` (new tables) over `source` (legacy tables).
pub fn target_ddl(target: &str, source: &str) -> String {
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(target));
    sql.push_str(&with_schemas(TARGET_TABLES_SQL, target, source));
    for (table, name, command, predicate) in policies() {
        let clause = match command {
            "INSERT" => format!("WITH CHECK ({predicate})"),
            _ => format!("USING ({predicate})"),
        };
        let create = format!(
            "CREATE POLICY {} ON {{t}}.{table} FOR {command} {clause}",
            quote_ident(&name)
        );
        // CREATE POLICY has no IF NOT EXISTS; check the catalog instead.
        let guarded = format!(
            "DO $leadsync$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = {} \
             AND tablename = '{table}' AND policyname = {}) THEN\n    {create};\n  END IF;\nEND $leadsync$;\n",
            crate::db::quote_literal(target),
            crate::db::quote_literal(&name),
        );
        sql.push_str(&with_schemas(&guarded, target, source));
    }
    sql
}

/// The `leadsync` schema's DDL.
pub fn state_ddl() -> &'static str {
    STATE_SQL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_knows_every_table_of_leadsyncs_schema() {
        let functions = crate::definer::ddl(&crate::definer::Relations {
            target: vec![1],
            state: vec![2],
            referenced: vec![3],
        });
        let created: std::collections::BTreeSet<&str> = STATE_SQL
            .lines()
            .chain(functions.lines())
            .filter_map(|l| l.strip_prefix("CREATE TABLE IF NOT EXISTS leadsync."))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        let listed: std::collections::BTreeSet<&str> = STATE_TABLES.iter().copied().collect();
        assert_eq!(created, listed);
    }

    #[test]
    fn every_table_gets_four_policies() {
        let p = policies();
        for table in TARGET_TABLES {
            let commands: Vec<&str> = p
                .iter()
                .filter(|(t, ..)| *t == table)
                .map(|(_, _, c, _)| *c)
                .collect();
            assert_eq!(
                commands,
                ["SELECT", "INSERT", "UPDATE", "DELETE"],
                "{table}"
            );
        }
        assert!(
            p.iter()
                .any(|(_, name, ..)| name == "Users can view customers in their workspace")
        );
    }

    #[test]
    fn ddl_names_the_configured_schemas() {
        let sql = target_ddl("crm_new", "crm");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"crm_new\".customers"));
        assert!(sql.contains("REFERENCES \"crm\".workspaces(id)"));
        assert!(sql.contains("ALTER TABLE \"crm\".custom_fields"));
        assert!(!sql.contains("{t}") && !sql.contains("{s}"));
        assert!(!sql.contains("UNIQUE(customer_id, productid)"));
    }

    #[test]
    fn length_limits_match_the_ddl() {
        for (column, _, limit) in crate::project::LENGTH_LIMITS {
            let (table, name) = column.split_once('.').unwrap();
            let start = TARGET_TABLES_SQL.find(&format!("{{t}}.{table} (")).unwrap();
            let body = &TARGET_TABLES_SQL[start..];
            let body = &body[..body.find(");").unwrap()];
            assert!(
                body.contains(&format!("\n    {name} VARCHAR({limit})")),
                "{column} is not VARCHAR({limit})"
            );
        }
    }
}
