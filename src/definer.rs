//! The few privileged steps the runtime role needs, as installer-owned `SECURITY DEFINER`
//! functions in the `leadsync` schema — so that the runtime role itself owns nothing and
//! can create nothing another role would run (see `docs/roles-and-tls.md`).
//!
//! Each function does one fixed thing to a fixed set of relations, named by OID when setup
//! makes them (no name is looked up at call time, no text from a table the runtime role can
//! write is ever run), with `search_path` pinned to `pg_catalog, pg_temp`:
//!
//! - **The checkpoint**: [`BIND_ORIGIN`] binds the session to a replication origin listed in
//!   `leadsync.origins` (which only setup writes) and nothing else; the other three act on the
//!   session's own origin.
//! - **The first load** ([`SET_ASIDE_FOR_LOAD`], [`RESTORE_AFTER_LOAD`]): sets the keys,
//!   indexes and (for the target tables) row-level security of leadsync's tables aside inside
//!   the load's transaction and puts them back before it commits. A deferred constraint
//!   trigger on `leadsync.load_guard` refuses to commit a transaction that set something
//!   aside without putting it back, so no caller can leave a table without its keys or its
//!   policies.
//! - **The foreign keys into legacy tables** ([`SET_ASIDE_FOREIGN_KEYS`],
//!   [`RESTORE_FOREIGN_KEYS`]): recorded in `leadsync.deferred_constraints` (which only these
//!   functions write), dropped, and rebuilt from the recorded names, quoted, only for a
//!   target table and only into one of the legacy tables they may point at.

use crate::db::quote_literal;

/// `leadsync.bind_origin(origin)`: the daemon's session setup.
pub const BIND_ORIGIN: &str = "leadsync.bind_origin(text)";
/// `leadsync.origin_xact_setup(lsn, committed)`: the checkpoint of the open transaction.
pub const ORIGIN_XACT_SETUP: &str = "leadsync.origin_xact_setup(pg_lsn, timestamp with time zone)";
/// `leadsync.origin_xact_reset()`.
pub const ORIGIN_XACT_RESET: &str = "leadsync.origin_xact_reset()";
/// `leadsync.origin_session_progress(flush)`: the checkpoint, read back.
pub const ORIGIN_SESSION_PROGRESS: &str = "leadsync.origin_session_progress(boolean)";
/// `leadsync.set_aside_for_load(tables)`: `'target'` or `'state'`.
pub const SET_ASIDE_FOR_LOAD: &str = "leadsync.set_aside_for_load(text)";
/// `leadsync.restore_after_load(tables)`.
pub const RESTORE_AFTER_LOAD: &str = "leadsync.restore_after_load(text)";
/// `leadsync.set_aside_foreign_keys()`.
pub const SET_ASIDE_FOREIGN_KEYS: &str = "leadsync.set_aside_foreign_keys()";
/// `leadsync.restore_foreign_keys()`.
pub const RESTORE_FOREIGN_KEYS: &str = "leadsync.restore_foreign_keys()";
/// The trigger function of `leadsync.load_guard` (the runtime role never calls it).
pub const LOAD_GUARD_CHECK: &str = "leadsync.load_guard_check()";

/// What the runtime role may execute.
pub const RUNTIME_FUNCTIONS: [&str; 8] = [
    BIND_ORIGIN,
    ORIGIN_XACT_SETUP,
    ORIGIN_XACT_RESET,
    ORIGIN_SESSION_PROGRESS,
    SET_ASIDE_FOR_LOAD,
    RESTORE_AFTER_LOAD,
    SET_ASIDE_FOREIGN_KEYS,
    RESTORE_FOREIGN_KEYS,
];

/// Every function setup makes, for teardown: the runtime role's and the guard's trigger
/// function.
pub const ALL_FUNCTIONS: [&str; RUNTIME_FUNCTIONS.len() + 1] = {
    let mut all = [LOAD_GUARD_CHECK; RUNTIME_FUNCTIONS.len() + 1];
    let mut i = 0;
    while i < RUNTIME_FUNCTIONS.len() {
        all[i] = RUNTIME_FUNCTIONS[i];
        i += 1;
    }
    all
};

/// The relations the functions act on, by OID, as setup finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relations {
    /// The six target tables.
    pub target: Vec<u32>,
    /// leadsync's copy of the legacy rows: `contacts`, `field_values`, `fields`.
    pub state: Vec<u32>,
    /// The legacy tables the target tables' foreign keys point into: `workspaces`,
    /// `custom_fields`, `auth.users`.
    pub referenced: Vec<u32>,
}

/// The leadsync tables whose keys the first load sets aside.
pub const LOADED_STATE_TABLES: [&str; 3] = ["contacts", "field_values", "fields"];

fn oid_array(oids: &[u32]) -> String {
    let list = oids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("ARRAY[{list}]::oid[]::regclass[]")
}

/// Tables only the installer writes, and the guard's trigger.
const TABLES_SQL: &str = r#"
-- The replication origins leadsync.bind_origin may bind: those setup created.
CREATE TABLE IF NOT EXISTS leadsync.origins (
    name TEXT PRIMARY KEY
);

-- What a first load set aside in its open transaction, and the statements that put it back
-- (made from the catalog by leadsync.set_aside_for_load; run by leadsync.restore_after_load).
CREATE TABLE IF NOT EXISTS leadsync.load_set_aside (
    tables TEXT NOT NULL,
    position INTEGER NOT NULL,
    statement TEXT NOT NULL,
    PRIMARY KEY (tables, position)
);

-- One row per group set aside; its deferred trigger checks, at commit, that everything was
-- put back.
CREATE TABLE IF NOT EXISTS leadsync.load_guard (
    tables TEXT NOT NULL
);
"#;

/// The functions' DDL (`CREATE OR REPLACE`, so setup can run again), then the guard's
/// trigger and the `EXECUTE` revoked from PUBLIC.
pub fn ddl(relations: &Relations) -> String {
    let target = oid_array(&relations.target);
    let state = oid_array(&relations.state);
    let referenced = oid_array(&relations.referenced);
    let definer = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp";
    let mut sql = String::from(TABLES_SQL);
    sql.push_str(&format!(
        r#"
CREATE OR REPLACE FUNCTION leadsync.bind_origin(origin text) RETURNS void
LANGUAGE plpgsql {definer} AS $fn$
BEGIN
    IF NOT EXISTS (SELECT FROM leadsync.origins o WHERE o.name = origin) THEN
        RAISE EXCEPTION 'replication origin "%" is not one leadsync set up', origin
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pg_catalog.pg_replication_origin_session_setup(origin);
END
$fn$;

CREATE OR REPLACE FUNCTION leadsync.origin_xact_setup(lsn pg_lsn, committed timestamptz)
RETURNS void LANGUAGE sql {definer}
AS $fn$ SELECT pg_catalog.pg_replication_origin_xact_setup(lsn, committed) $fn$;

CREATE OR REPLACE FUNCTION leadsync.origin_xact_reset() RETURNS void
LANGUAGE sql {definer}
AS $fn$ SELECT pg_catalog.pg_replication_origin_xact_reset() $fn$;

CREATE OR REPLACE FUNCTION leadsync.origin_session_progress(flush boolean) RETURNS pg_lsn
LANGUAGE sql {definer}
AS $fn$ SELECT pg_catalog.pg_replication_origin_session_progress(flush) $fn$;

CREATE OR REPLACE FUNCTION leadsync.load_guard_check() RETURNS trigger
LANGUAGE plpgsql {definer} AS $fn$
BEGIN
    IF EXISTS (SELECT FROM leadsync.load_set_aside s WHERE s.tables = NEW.tables) THEN
        RAISE EXCEPTION 'the % tables'' keys, indexes or row-level security were set aside and not put back', NEW.tables
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION leadsync.set_aside_for_load(which text) RETURNS integer
LANGUAGE plpgsql {definer} AS $fn$
DECLARE
    rels regclass[];
    r record;
    drops text[] := '{{}}';
    n integer := 0;
BEGIN
    rels := CASE which WHEN 'target' THEN {target} WHEN 'state' THEN {state} END;
    IF rels IS NULL THEN
        RAISE EXCEPTION 'no table group "%"', which USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM leadsync.load_set_aside s WHERE s.tables = which) THEN
        RAISE EXCEPTION 'the % tables are set aside already', which
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Keys that a table outside the group refers to stay; foreign keys between the group's
    -- tables go first (they depend on the keys).
    FOR r IN
        SELECT c.conrelid::regclass AS rel, c.conname, c.contype, pg_get_constraintdef(c.oid) AS def
        FROM pg_constraint c
        WHERE c.conrelid = ANY(rels)
          AND ((c.contype IN ('p', 'u')
                AND NOT EXISTS (SELECT FROM pg_constraint d
                                WHERE d.contype = 'f' AND d.confrelid = c.conrelid
                                  AND d.conrelid <> ALL(rels)))
               OR (c.contype = 'f' AND c.confrelid = ANY(rels)))
        ORDER BY (c.contype = 'f') DESC, c.conrelid::regclass::text, c.conname
    LOOP
        n := n + 1;
        drops := drops || format('ALTER TABLE %s DROP CONSTRAINT %I', r.rel, r.conname);
        INSERT INTO leadsync.load_set_aside VALUES
            (which, CASE WHEN r.contype = 'f' THEN 3000000 ELSE 1000000 END + n,
             format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.rel, r.conname, r.def));
    END LOOP;
    FOR r IN
        SELECT i.indexrelid::regclass AS idx, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i
        WHERE i.indrelid = ANY(rels)
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
    LOOP
        n := n + 1;
        drops := drops || format('DROP INDEX %s', r.idx);
        INSERT INTO leadsync.load_set_aside VALUES (which, 2000000 + n, r.def);
    END LOOP;
    -- COPY into a table whose policies apply to the session is refused; the first load
    -- writes with them off, inside its own transaction, and they are on again before it
    -- commits (the guard sees to it).
    FOR r IN
        SELECT c.oid::regclass AS rel FROM pg_class c
        WHERE c.oid = ANY(rels) AND c.relrowsecurity ORDER BY 1
    LOOP
        n := n + 1;
        drops := drops || format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.rel);
        INSERT INTO leadsync.load_set_aside VALUES
            (which, 4000000 + n, format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', r.rel));
    END LOOP;
    FOR r IN SELECT unnest(drops) AS statement LOOP
        EXECUTE r.statement;
    END LOOP;
    IF n > 0 THEN
        INSERT INTO leadsync.load_guard VALUES (which);
    END IF;
    RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION leadsync.restore_after_load(which text) RETURNS integer
LANGUAGE plpgsql {definer} AS $fn$
DECLARE
    r record;
    n integer := 0;
BEGIN
    IF which NOT IN ('target', 'state') THEN
        RAISE EXCEPTION 'no table group "%"', which USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN
        SELECT s.statement FROM leadsync.load_set_aside s
        WHERE s.tables = which ORDER BY s.position
    LOOP
        EXECUTE r.statement;
        n := n + 1;
    END LOOP;
    DELETE FROM leadsync.load_set_aside s WHERE s.tables = which;
    DELETE FROM leadsync.load_guard g WHERE g.tables = which;
    -- Fresh statistics for the application's queries (only the owner may analyse).
    IF which = 'target' THEN
        FOR r IN SELECT unnest({target}) AS rel LOOP
            EXECUTE format('ANALYZE %s', r.rel);
        END LOOP;
    END IF;
    RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION leadsync.set_aside_foreign_keys() RETURNS integer
LANGUAGE plpgsql {definer} AS $fn$
DECLARE
    k record;
BEGIN
    -- Only simple, immediate keys, and only those this function's owner could add back.
    FOR k IN
        SELECT c.conrelid::regclass AS rel, r.relname::text AS table_name,
               c.conname::text AS constraint_name,
               ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS x(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = x.n
                     ORDER BY x.i) AS columns,
               fn.nspname::text AS referenced_schema, f.relname::text AS referenced_table,
               ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS x(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = x.n
                     ORDER BY x.i) AS referenced_columns,
               c.confdeltype::text AS on_delete, c.confupdtype::text AS on_update
        FROM pg_constraint c
        JOIN pg_class r ON r.oid = c.conrelid
        JOIN pg_class f ON f.oid = c.confrelid
        JOIN pg_namespace fn ON fn.oid = f.relnamespace
        WHERE c.contype = 'f' AND c.conrelid = ANY({target}) AND c.confrelid = ANY({referenced})
          AND c.confmatchtype = 's' AND NOT c.condeferrable
          AND has_table_privilege(f.oid, 'REFERENCES') AND has_schema_privilege(fn.oid, 'USAGE')
        ORDER BY 2, 3
    LOOP
        INSERT INTO leadsync.deferred_constraints
            (table_name, constraint_name, columns, referenced_schema, referenced_table,
             referenced_columns, on_delete, on_update)
        VALUES (k.table_name, k.constraint_name, k.columns, k.referenced_schema,
                k.referenced_table, k.referenced_columns, k.on_delete, k.on_update)
        ON CONFLICT DO NOTHING;
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', k.rel, k.constraint_name);
    END LOOP;
    RETURN (SELECT count(*) FROM leadsync.deferred_constraints);
END
$fn$;

CREATE OR REPLACE FUNCTION leadsync.restore_foreign_keys() RETURNS integer
LANGUAGE plpgsql {definer} AS $fn$
DECLARE
    k record;
    rel regclass;
    ref regclass;
    actions CONSTANT jsonb := '{{"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}}';
    n integer := 0;
BEGIN
    FOR k IN SELECT * FROM leadsync.deferred_constraints ORDER BY table_name, constraint_name LOOP
        SELECT t INTO rel FROM unnest({target}) AS t
        JOIN pg_class c ON c.oid = t WHERE c.relname = k.table_name;
        SELECT t INTO ref FROM unnest({referenced}) AS t
        JOIN pg_class c ON c.oid = t JOIN pg_namespace s ON s.oid = c.relnamespace
        WHERE s.nspname = k.referenced_schema AND c.relname = k.referenced_table;
        IF rel IS NULL OR ref IS NULL OR COALESCE(cardinality(k.columns), 0) = 0
           OR cardinality(k.columns) IS DISTINCT FROM cardinality(k.referenced_columns)
           OR NOT actions ? COALESCE(k.on_delete, '') OR NOT actions ? COALESCE(k.on_update, '') THEN
            RAISE WARNING 'leadsync: the recorded foreign key "%" of "%" is not one leadsync sets aside; it is not added back and its record is removed',
                k.constraint_name, k.table_name;
            CONTINUE;
        END IF;
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %s (%s) ON DELETE %s ON UPDATE %s',
            rel, k.constraint_name,
            (SELECT string_agg(quote_ident(x.c), ', ' ORDER BY x.i) FROM unnest(k.columns) WITH ORDINALITY AS x(c, i)),
            ref,
            (SELECT string_agg(quote_ident(x.c), ', ' ORDER BY x.i) FROM unnest(k.referenced_columns) WITH ORDINALITY AS x(c, i)),
            actions ->> k.on_delete, actions ->> k.on_update);
        n := n + 1;
    END LOOP;
    DELETE FROM leadsync.deferred_constraints;
    RETURN n;
END
$fn$;

DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'leadsync.load_guard'::regclass
                   AND tgname = 'load_guard') THEN
        CREATE CONSTRAINT TRIGGER load_guard AFTER INSERT ON leadsync.load_guard
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            EXECUTE FUNCTION leadsync.load_guard_check();
    END IF;
END
$do$;
"#
    ));
    sql.push_str(&format!(
        "REVOKE ALL ON FUNCTION {} FROM PUBLIC;\n",
        ALL_FUNCTIONS.join(", ")
    ));
    sql
}

/// Records `origin` as one [`BIND_ORIGIN`] may bind.
pub fn record_origin_sql(origin: &str) -> String {
    format!(
        "INSERT INTO leadsync.origins (name) VALUES ({}) ON CONFLICT DO NOTHING",
        quote_literal(origin)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_are_named_by_oid_only() {
        let sql = ddl(&Relations {
            target: vec![1, 2],
            state: vec![3],
            referenced: vec![4, 5],
        });
        assert!(sql.contains("WHEN 'target' THEN ARRAY[1, 2]::oid[]::regclass[]"));
        assert!(sql.contains("WHEN 'state' THEN ARRAY[3]::oid[]::regclass[]"));
        assert!(sql.contains("c.confrelid = ANY(ARRAY[4, 5]::oid[]::regclass[])"));
        assert_eq!(
            sql.matches("SECURITY DEFINER SET search_path = pg_catalog, pg_temp")
                .count(),
            ALL_FUNCTIONS.len()
        );
        assert!(sql.contains(&format!(
            "REVOKE ALL ON FUNCTION {} FROM PUBLIC",
            ALL_FUNCTIONS.join(", ")
        )));
    }

    #[test]
    fn every_function_made_is_listed() {
        let sql = ddl(&Relations {
            target: vec![1],
            state: vec![2],
            referenced: vec![3],
        });
        let made = sql.matches("CREATE OR REPLACE FUNCTION leadsync.").count();
        assert_eq!(made, ALL_FUNCTIONS.len());
        for f in ALL_FUNCTIONS {
            let name = f.split('(').next().unwrap();
            assert!(
                sql.contains(&format!("CREATE OR REPLACE FUNCTION {name}(")),
                "{name}"
            );
        }
        assert!(RUNTIME_FUNCTIONS.iter().all(|f| ALL_FUNCTIONS.contains(f)));
        assert!(!RUNTIME_FUNCTIONS.contains(&LOAD_GUARD_CHECK));
    }
}
