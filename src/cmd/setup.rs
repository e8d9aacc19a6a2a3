//! `leadsync setup`: checks every precondition, then installs the target schema, the
//! `leadsync` state schema, the publication and the replication origin in one transaction.
//! Running it again changes nothing.
//!
//! The replication slot is not made here: the first `leadsync run` creates it together with
//! the snapshot its backfill reads, so that no change can fall between the two.

use std::collections::BTreeSet;
use std::fmt;

use tokio_postgres::Client;

use crate::config::Settings;
use crate::db::{self, ConnectError, quote_ident};
use crate::definer;
use crate::grants::{self, On, Role, RoleNames, Schemas, When};
use crate::schema::{self, PUBLISHED_LEGACY_TABLES, STATE_SCHEMA};
use crate::triggers::{self, SyncTrigger};

/// Oldest server version leadsync supports (logical replication protocol and origins as
/// used here are those of PostgreSQL 15).
const MIN_SERVER_VERSION: i32 = 150_000;

/// Legacy columns the projection reads, per table. A missing one stops setup.
pub fn required_columns() -> Vec<(&'static str, Vec<&'static str>)> {
    use crate::project::{CONTACT_COLUMNS, VALUE_COLUMNS};
    vec![
        (
            "contacts",
            CONTACT_COLUMNS.iter().map(|(n, _)| *n).collect(),
        ),
        (
            "contact_custom_fields",
            VALUE_COLUMNS.iter().map(|(n, _)| *n).collect(),
        ),
        ("custom_fields", vec!["id", "workspace_id"]),
        ("workspaces", vec!["id"]),
        ("workspace_users", vec!["workspace_id", "user_id"]),
    ]
}

/// A precondition that does not hold, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    OldServer {
        version: String,
    },
    WalLevel {
        current: String,
    },
    MissingTable {
        table: String,
    },
    MissingColumn {
        table: String,
        column: String,
    },
    MissingAuth {
        object: String,
    },
    Privileges {
        role: String,
        missing: Vec<String>,
    },
    NoRuntimeRole {
        role: String,
    },
    RuntimeRole {
        role: String,
        missing: Vec<String>,
    },
    HandOver {
        installer: String,
        runtime: String,
        missing: Vec<String>,
    },
    RuntimeFoothold {
        role: String,
        footholds: Vec<String>,
    },
    NoFreeSlot {
        used: i64,
        max: i64,
    },
    NoFreeWalSender {
        used: i64,
        max: i64,
    },
    SlotElsewhere {
        slot: String,
        database: String,
        plugin: String,
    },
    SyncTriggers {
        triggers: Vec<SyncTrigger>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::OldServer { version } => write!(
                f,
                "the server runs PostgreSQL {version}; leadsync needs PostgreSQL 15 or later"
            ),
            Problem::WalLevel { current } => write!(
                f,
                "wal_level is `{current}`, but logical decoding needs `logical`: as a superuser \
                 run `ALTER SYSTEM SET wal_level = logical` (or set it in postgresql.conf) and \
                 restart PostgreSQL"
            ),
            Problem::MissingTable { table } => write!(
                f,
                "legacy table `{table}` does not exist: point source.url at the legacy \
                 database, or set source.schema to the schema that holds it"
            ),
            Problem::MissingColumn { table, column } => write!(
                f,
                "legacy table `{table}` has no column `{column}`, which the projection reads"
            ),
            Problem::MissingAuth { object } => write!(
                f,
                "`{object}` does not exist: the row-level-security policies of the new tables \
                 use it to find the signed-in user"
            ),
            Problem::Privileges { role, missing } => write!(
                f,
                "role `{role}` lacks what setup needs: {}. Run setup as the installer role \
                 (one that owns the legacy tables); `leadsync setup --print-grants` prints \
                 the SQL that creates it with every privilege it needs",
                missing.join("; ")
            ),
            Problem::NoRuntimeRole { role } => write!(
                f,
                "the runtime role `{role}` does not exist: create it with the SQL that \
                 `leadsync setup --print-grants --runtime-role {role}` prints (as a superuser)"
            ),
            Problem::RuntimeRole { role, missing } => write!(
                f,
                "the runtime role `{role}` lacks what `leadsync run` needs: {}. Run the SQL that \
                 `leadsync setup --print-grants --runtime-role {role}` prints (as a superuser)",
                missing.join("; ")
            ),
            Problem::HandOver {
                installer,
                runtime,
                missing,
            } => write!(
                f,
                "role `{installer}` cannot hand the target tables and leadsync's tables to \
                 `{runtime}`: it lacks {}. Run the SQL that `leadsync setup --print-grants \
                 --installer-role {installer} --runtime-role {runtime}` prints (as a superuser)",
                missing.join("; ")
            ),
            Problem::RuntimeFoothold { role, footholds } => write!(
                f,
                "the runtime role `{role}` could make other roles run its code, or holds more \
                 than leadsync needs; as a superuser, take away:\n{}",
                footholds
                    .iter()
                    .map(|h| format!("      {h}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Problem::NoFreeSlot { used, max } => write!(
                f,
                "all {used} of {max} replication slots are in use (max_replication_slots = \
                 {max}): drop an unused one with `SELECT pg_drop_replication_slot('name')` or \
                 raise max_replication_slots and restart PostgreSQL"
            ),
            Problem::NoFreeWalSender { used, max } => write!(
                f,
                "all {used} of {max} WAL senders are busy (max_wal_senders = {max}): raise \
                 max_wal_senders and restart PostgreSQL"
            ),
            Problem::SlotElsewhere {
                slot,
                database,
                plugin,
            } => write!(
                f,
                "a replication slot `{slot}` already exists for database `{database}` with \
                 plugin `{plugin}`: choose another slot.name, or drop that slot if it is unused"
            ),
            Problem::SyncTriggers { triggers } => write!(
                f,
                "triggers that write `customers` or `contacts` are installed: {}. leadsync does \
                 their work, and with them in place every change would loop between the two \
                 schemas; drop them (their functions may stay) with:\n{}",
                triggers
                    .iter()
                    .map(SyncTrigger::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                triggers
                    .iter()
                    .map(|t| format!("      {}", t.drop_sql))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

/// Why setup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("setup cannot proceed:\n{}", list(.0))]
    Preconditions(Vec<Problem>),
    #[error("setup failed while {step}: {cause}; nothing was changed (it ran in one transaction)")]
    Ddl { step: &'static str, cause: String },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What setup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// Objects that did not exist before, as `kind name`.
    pub created: Vec<String>,
    /// Whether the publication's table list had to be changed.
    pub publication_altered: bool,
    /// What was handed to the runtime role (`--runtime-role`), as `what`.
    pub handed_over: Vec<String>,
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created.is_empty() && !self.publication_altered && self.handed_over.is_empty() {
            return writeln!(f, "setup: everything was already in place; nothing changed");
        }
        if !self.created.is_empty() || self.publication_altered {
            writeln!(f, "setup: created {} objects", self.created.len())?;
        } else {
            writeln!(f, "setup: the schema was already in place")?;
        }
        // Group by kind: one line per kind, names listed where there are few.
        let mut kinds: Vec<(&str, Vec<&str>)> = Vec::new();
        for object in &self.created {
            let (kind, name) = object.split_once(' ').unwrap_or(("object", object));
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, names)) => names.push(name),
                None => kinds.push((kind, vec![name])),
            }
        }
        for (kind, names) in kinds {
            if names.len() <= 8 {
                writeln!(f, "  + {kind}: {}", names.join(", "))?;
            } else {
                let plural = match kind {
                    "index" => "indexes".to_owned(),
                    "policy" => "policies".to_owned(),
                    other => format!("{other}s"),
                };
                writeln!(f, "  + {} {plural}", names.len())?;
            }
        }
        if self.publication_altered {
            writeln!(f, "  ~ publication table list updated")?;
        }
        for what in &self.handed_over {
            writeln!(f, "  > {what}")?;
        }
        Ok(())
    }
}

fn ddl_error(step: &'static str) -> impl Fn(tokio_postgres::Error) -> SetupError {
    move |e| SetupError::Ddl {
        step,
        cause: db::error_text(&e),
    }
}

/// How setup runs, besides the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupOptions {
    /// The role `leadsync run` connects as: setup checks that it has its privileges and hands
    /// it the target tables and leadsync's tables (see [`crate::grants`]).
    pub runtime_role: Option<String>,
}

/// Runs `leadsync setup`.
pub async fn run_setup(settings: &Settings) -> Result<SetupReport, SetupError> {
    run_setup_with(settings, &SetupOptions::default()).await
}

/// Runs `leadsync setup` with options.
pub async fn run_setup_with(
    settings: &Settings,
    options: &SetupOptions,
) -> Result<SetupReport, SetupError> {
    let client = db::connect(settings.source_url()).await?;
    let mut problems = check_preconditions(&client, settings)
        .await
        .map_err(ddl_error("checking preconditions"))?;
    if let Some(runtime) = &options.runtime_role {
        problems.extend(
            check_runtime_role(&client, settings, runtime)
                .await
                .map_err(ddl_error("checking the runtime role"))?,
        );
    }
    if !problems.is_empty() {
        return Err(SetupError::Preconditions(problems));
    }
    install(&client, settings, options).await
}

/// The SQL `leadsync setup --print-grants` prints: the two roles and their privileges for
/// the configured schemas. Connects to nothing.
pub fn grants_sql(settings: &Settings, installer: &str, runtime: &str) -> String {
    grants::roles_sql(
        &RoleNames {
            installer: installer.to_owned(),
            runtime: runtime.to_owned(),
        },
        &schemas_of(settings),
    )
}

fn schemas_of(settings: &Settings) -> Schemas {
    Schemas {
        source: settings.source.schema.clone(),
        target: settings.target.schema.clone(),
    }
}

/// What keeps setup from handing its tables to `runtime`, and what `runtime` lacks of the
/// privileges a superuser gives it before setup.
async fn check_runtime_role(
    client: &Client,
    settings: &Settings,
    runtime: &str,
) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&runtime],
        )
        .await?;
    let (installer, superuser, exists): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists {
        return Ok(vec![Problem::NoRuntimeRole {
            role: runtime.to_owned(),
        }]);
    }
    let names = RoleNames {
        installer: installer.clone(),
        runtime: runtime.to_owned(),
    };
    let schemas = schemas_of(settings);
    let schema_exists = |name: &str| {
        let name = name.to_owned();
        async move {
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                    &[&name],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
        }
    };
    // A target schema setup is about to create is granted to the runtime role by setup.
    let target_exists = schema_exists(&settings.target.schema).await?;
    let mut missing = Vec::new();
    for check in grants::checks(Role::Runtime, &names, &schemas) {
        if check.on == On::Schema(grants::Schema::Target) && !target_exists {
            continue;
        }
        let ok: bool = client
            .query_one(&format!("SELECT {}", check.sql), &[])
            .await?
            .get(0);
        if !ok {
            missing.push(format!("{} ({})", check.what, check.why));
        }
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(Problem::RuntimeRole {
            role: runtime.to_owned(),
            missing,
        });
    }
    if superuser {
        return Ok(problems);
    }
    let mut missing = Vec::new();
    let member: bool = client
        .query_one(
            "SELECT pg_has_role(current_user, $1, 'MEMBER')",
            &[&runtime],
        )
        .await?
        .get(0);
    if !member {
        missing.push(format!(
            "membership in role `{runtime}` (a table can only be given to a role one may act as)"
        ));
    }
    // Setup grants the runtime role USAGE on leadsync's schema; when that schema is already
    // there, the installer must be able to.
    if schema_exists(STATE_SCHEMA).await? {
        for privilege in ["USAGE"] {
            let ok: bool = client
                .query_one(
                    "SELECT has_schema_privilege($1, $2, $3)
                         OR has_schema_privilege(current_user, $2, $3 || ' WITH GRANT OPTION')",
                    &[&runtime, &STATE_SCHEMA, &privilege],
                )
                .await?
                .get(0);
            if !ok {
                missing.push(format!(
                    "{privilege} on schema `{STATE_SCHEMA}` WITH GRANT OPTION (to grant it to \
                     `{runtime}`)"
                ));
            }
        }
    }
    if !missing.is_empty() {
        problems.push(Problem::HandOver {
            installer,
            runtime: runtime.to_owned(),
            missing,
        });
    }
    let footholds = runtime_footholds(client, settings, runtime).await?;
    if !footholds.is_empty() {
        problems.push(Problem::RuntimeFoothold {
            role: runtime.to_owned(),
            footholds,
        });
    }
    Ok(problems)
}

/// What would let `runtime` become more than leadsync's runtime role: role attributes
/// beyond LOGIN and REPLICATION, membership in other roles, CREATE on the database or on a
/// schema (where it could plant a function or table that other roles' queries pick up), and
/// objects it owns (a trigger function, a view). Each with the statement that takes it away.
/// leadsync's own tables an older setup had handed to it are not listed: setup takes them
/// back itself.
pub async fn runtime_footholds(
    client: &Client,
    settings: &Settings,
    runtime: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH r AS (SELECT * FROM pg_roles WHERE rolname = $1),
                  ours AS (
                    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'leadsync'
                       OR (n.nspname = $2 AND c.relname = ANY($3::text[]))
                    UNION SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'leadsync'
                       OR (n.nspname = $2 AND c.relname = ANY($3::text[])))
             SELECT format('the %s attribute: ALTER ROLE %I NO%s;', a.name, r.rolname, a.name)
               FROM r, LATERAL (VALUES ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole),
                                       ('CREATEDB', r.rolcreatedb), ('BYPASSRLS', r.rolbypassrls))
                       AS a(name, held)
              WHERE a.held
             UNION ALL
             SELECT format('membership in role %I: REVOKE %I FROM %I;', b.rolname, b.rolname, r.rolname)
               FROM r, pg_roles b
              WHERE b.oid <> r.oid AND pg_has_role(r.oid, b.oid, 'MEMBER')
                AND (b.rolname !~ '^pg_' OR b.rolname IN ('pg_execute_server_program',
                     'pg_write_server_files', 'pg_read_server_files', 'pg_write_all_data'))
             UNION ALL
             SELECT format('CREATE on this database: REVOKE CREATE ON DATABASE %I FROM %s;',
                           current_database(),
                           CASE WHEN has_database_privilege('public', current_database(), 'CREATE')
                                THEN 'PUBLIC' ELSE quote_ident(r.rolname) END)
               FROM r WHERE NOT r.rolsuper AND has_database_privilege(r.oid, current_database(), 'CREATE')
             UNION ALL
             SELECT format('CREATE on schema %I: REVOKE CREATE ON SCHEMA %I FROM %s;',
                           n.nspname, n.nspname,
                           CASE WHEN has_schema_privilege('public', n.oid, 'CREATE')
                                THEN 'PUBLIC' ELSE quote_ident(r.rolname) END)
               FROM r, pg_namespace n
              WHERE NOT r.rolsuper AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
                AND n.nspname <> 'leadsync' AND has_schema_privilege(r.oid, n.oid, 'CREATE')
             UNION ALL
             SELECT format('ownership of schema %I: ALTER SCHEMA %I OWNER TO ...;', n.nspname, n.nspname)
               FROM r, pg_namespace n WHERE n.nspowner = r.oid
             UNION ALL
             SELECT format('ownership of %s %s: ALTER ... OWNER TO ..., or drop it;',
                           CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view'
                                WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                                WHEN 'i' THEN 'index' ELSE 'relation' END,
                           c.oid::regclass)
               FROM r, pg_class c
              WHERE c.relowner = r.oid AND c.oid NOT IN (SELECT oid FROM ours)
                AND c.relnamespace <> 'pg_toast'::regnamespace AND c.relpersistence <> 't'
             UNION ALL
             SELECT format('ownership of function %s: ALTER FUNCTION %s OWNER TO ..., or drop it;',
                           p.oid::regprocedure, p.oid::regprocedure)
               FROM r, pg_proc p
              WHERE p.proowner = r.oid
                AND p.pronamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname ~ '^pg_temp')
             ORDER BY 1",
            &[
                &runtime,
                &settings.target.schema,
                &schema::TARGET_TABLES.to_vec(),
            ],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Every precondition that does not hold (empty when setup may proceed).
pub async fn check_preconditions(
    client: &Client,
    settings: &Settings,
) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let mut problems = Vec::new();
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level'), current_user::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await?;
    let (version_num, version): (i32, String) = (row.get(0), row.get(1));
    let wal_level: String = row.get(2);
    let role: String = row.get(3);
    let superuser: bool = row.get(4);
    if version_num < MIN_SERVER_VERSION {
        problems.push(Problem::OldServer { version });
    }
    if wal_level != "logical" {
        problems.push(Problem::WalLevel { current: wal_level });
    }

    let source = &settings.source.schema;
    let mut tables_present = true;
    for (table, columns) in required_columns() {
        let present: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[source, &table],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if present.is_empty() {
            tables_present = false;
            problems.push(Problem::MissingTable {
                table: format!("{source}.{table}"),
            });
            continue;
        }
        for column in columns {
            if !present.iter().any(|p| p == column) {
                problems.push(Problem::MissingColumn {
                    table: format!("{source}.{table}"),
                    column: column.to_owned(),
                });
            }
        }
    }
    // Catalog joins rather than to_regclass(): name lookups fail outright in a schema the
    // role may not use, which is a privilege problem reported below, not a missing object.
    for (object, check) in [
        (
            "auth.users",
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'auth' AND c.relname = 'users')",
        ),
        (
            "auth.uid()",
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                            WHERE n.nspname = 'auth' AND p.proname = 'uid' AND p.pronargs = 0)",
        ),
    ] {
        let present: bool = client.query_one(check, &[]).await?.get(0);
        if !present {
            problems.push(Problem::MissingAuth {
                object: object.into(),
            });
        }
    }

    let found = triggers::sync_triggers(client, settings).await?;
    if !found.is_empty() {
        problems.push(Problem::SyncTriggers { triggers: found });
    }

    if !superuser && tables_present {
        let missing = missing_privileges(client, settings).await?;
        if !missing.is_empty() {
            problems.push(Problem::Privileges { role, missing });
        }
    }

    let slot = client
        .query_opt(
            "SELECT database::text, plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&settings.slot.name],
        )
        .await?;
    match slot {
        Some(row) => {
            let database: Option<String> = row.get(0);
            let plugin: Option<String> = row.get(1);
            let current_db: String = client
                .query_one("SELECT current_database()::text", &[])
                .await?
                .get(0);
            let (database, plugin) = (database.unwrap_or_default(), plugin.unwrap_or_default());
            if database != current_db || plugin != "pgoutput" {
                problems.push(Problem::SlotElsewhere {
                    slot: settings.slot.name.clone(),
                    database,
                    plugin,
                });
            }
        }
        None => {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots),
                            current_setting('max_replication_slots')::bigint,
                            (SELECT count(*) FROM pg_stat_replication),
                            current_setting('max_wal_senders')::bigint",
                    &[],
                )
                .await?;
            let (used, max): (i64, i64) = (row.get(0), row.get(1));
            if used >= max {
                problems.push(Problem::NoFreeSlot { used, max });
            }
            let (used, max): (i64, i64) = (row.get(2), row.get(3));
            if used >= max {
                problems.push(Problem::NoFreeWalSender { used, max });
            }
        }
    }
    Ok(problems)
}

/// What a non-superuser installer lacks, each with the reason it is needed.
async fn missing_privileges(
    client: &Client,
    settings: &Settings,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let source = &settings.source.schema;
    let target = &settings.target.schema;
    let mut missing = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            missing.push(what);
        }
    };

    let db_create: bool = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await?
        .get(0);
    for schema in [target.as_str(), STATE_SCHEMA] {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                        CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)
                             THEN has_schema_privilege($1, 'CREATE') END",
                &[&schema],
            )
            .await?;
        let exists: bool = row.get(0);
        if exists {
            let create: Option<bool> = row.get(1);
            check(
                create.unwrap_or(false),
                format!("CREATE on schema `{schema}` (to create its tables)"),
            );
        } else {
            check(
                db_create,
                format!("CREATE on the database (to create schema `{schema}`)"),
            );
        }
    }
    let publication_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&settings.publication.name],
        )
        .await?
        .get(0);
    if !publication_exists {
        check(
            db_create,
            "CREATE on the database (to create the publication)".into(),
        );
    }
    for table in PUBLISHED_LEGACY_TABLES {
        let owns: bool = client
            .query_one(
                "SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[source, &table],
            )
            .await?
            .get(0);
        let why = if table == "custom_fields" {
            "to add context_type and to publish it"
        } else {
            "to publish it"
        };
        check(
            owns,
            format!("ownership of `{source}.{table}` (or membership in its owner role), {why}"),
        );
    }
    for (schema, usage_why) in [
        (source.as_str(), "to reach the legacy tables"),
        ("auth", "to reference auth.users and call auth.uid()"),
    ] {
        let ok: bool = client
            .query_one(
                "SELECT COALESCE((SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace
                                  WHERE nspname = $1), false)",
                &[&schema],
            )
            .await?
            .get(0);
        check(ok, format!("USAGE on schema `{schema}` ({usage_why})"));
    }
    for (schema, table, privilege, why) in [
        (
            source.as_str(),
            "workspaces",
            "REFERENCES",
            "for foreign keys",
        ),
        (
            source.as_str(),
            "custom_fields",
            "REFERENCES",
            "for foreign keys",
        ),
        ("auth", "users", "REFERENCES", "for foreign keys"),
        (
            source.as_str(),
            "workspace_users",
            "SELECT",
            "for the RLS policies",
        ),
    ] {
        let ok: bool = client
            .query_one(
                "SELECT COALESCE((SELECT has_table_privilege(c.oid, $3)
                                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = $1 AND c.relname = $2), false)",
                &[&schema, &table, &privilege],
            )
            .await?
            .get(0);
        check(ok, format!("{privilege} on `{schema}.{table}` ({why})"));
    }
    // leadsync's functions, which setup creates as the installer, call these as the
    // installer when the runtime role checkpoints.
    for function in grants::INSTALLER_ORIGIN_FUNCTIONS
        .iter()
        .filter(|f| !f.starts_with("pg_replication_origin_create"))
    {
        let ok: bool = client
            .query_one("SELECT has_function_privilege($1, 'EXECUTE')", &[function])
            .await?
            .get(0);
        check(
            ok,
            format!(
                "EXECUTE on {function} (leadsync's functions call it for the runtime role's \
                 checkpoint)"
            ),
        );
    }
    let origin_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&settings.origin_name()],
        )
        .await?
        .get(0);
    if !origin_exists {
        let ok: bool = client
            .query_one(
                "SELECT has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')",
                &[],
            )
            .await?
            .get(0);
        check(
            ok,
            "EXECUTE on pg_replication_origin_create(text) (to create the replication origin)"
                .into(),
        );
    }
    Ok(missing)
}

/// The tables the publication must carry.
pub fn published_tables(settings: &Settings) -> BTreeSet<(String, String)> {
    let mut tables: BTreeSet<(String, String)> = PUBLISHED_LEGACY_TABLES
        .iter()
        .map(|t| (settings.source.schema.clone(), (*t).to_owned()))
        .collect();
    if settings.sync.reverse {
        tables.insert((settings.target.schema.clone(), "customers".into()));
    }
    tables
}

/// Installs everything in one transaction.
async fn install(
    client: &Client,
    settings: &Settings,
    options: &SetupOptions,
) -> Result<SetupReport, SetupError> {
    let before = catalog_objects(client, settings)
        .await
        .map_err(ddl_error("reading the catalog"))?;
    // Waiting behind the application's locks for long would stall its writers queued
    // behind us; fail fast and let the operator retry at a quieter moment.
    client
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '10s';")
        .await
        .map_err(ddl_error("starting the transaction"))?;
    let result = async {
        let altered = install_in_transaction(client, settings).await?;
        let handed_over = match &options.runtime_role {
            Some(runtime) => hand_over(client, settings, runtime).await?,
            None => Vec::new(),
        };
        Ok::<_, SetupError>((altered, handed_over))
    }
    .await;
    match result {
        Ok((publication_altered, handed_over)) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(ddl_error("committing"))?;
            let after = catalog_objects(client, settings)
                .await
                .map_err(ddl_error("reading the catalog"))?;
            Ok(SetupReport {
                created: after.difference(&before).cloned().collect(),
                publication_altered,
                handed_over,
            })
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn install_in_transaction(client: &Client, settings: &Settings) -> Result<bool, SetupError> {
    let target_sql = schema::target_ddl(&settings.target.schema, &settings.source.schema);
    client
        .batch_execute(&target_sql)
        .await
        .map_err(ddl_error("creating the target schema"))?;
    client
        .batch_execute(schema::state_ddl())
        .await
        .map_err(ddl_error("creating the leadsync schema"))?;
    let relations = definer_relations(client, settings).await?;
    client
        .batch_execute(&definer::ddl(&relations))
        .await
        .map_err(ddl_error("creating leadsync's functions"))?;
    client
        .batch_execute(&definer::record_origin_sql(settings.origin_name()))
        .await
        .map_err(ddl_error("recording the replication origin"))?;
    client
        .execute(
            "INSERT INTO leadsync.sync_state (slot_name) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&settings.slot.name],
        )
        .await
        .map_err(ddl_error("recording the slot"))?;

    let wanted = published_tables(settings);
    let table_list = wanted
        .iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let publication = quote_ident(&settings.publication.name);
    let existing = client
        .query(
            "SELECT p.pubname IS NOT NULL, t.schemaname::text, t.tablename::text
             FROM pg_publication p
             LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname
             WHERE p.pubname = $1",
            &[&settings.publication.name],
        )
        .await
        .map_err(ddl_error("reading the publication"))?;
    let mut altered = false;
    if existing.is_empty() {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {table_list}"
            ))
            .await
            .map_err(ddl_error("creating the publication"))?;
    } else {
        let current: BTreeSet<(String, String)> = existing
            .iter()
            .filter_map(|r| {
                Some((
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .collect();
        if current != wanted {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {publication} SET TABLE {table_list}"
                ))
                .await
                .map_err(ddl_error("updating the publication's tables"))?;
            altered = true;
        }
    }

    if settings.sync.reverse {
        // Reverse sync writes back only the columns a customer edit changed; the stream
        // tells which when it carries the row as it was before the update.
        let customers = format!("{}.customers", quote_ident(&settings.target.schema));
        let full: bool = client
            .query_one(
                "SELECT relreplident = 'f' FROM pg_class WHERE oid = $1::text::regclass",
                &[&customers],
            )
            .await
            .map_err(ddl_error("reading customers' replica identity"))?
            .get(0);
        if !full {
            client
                .batch_execute(&format!("ALTER TABLE {customers} REPLICA IDENTITY FULL"))
                .await
                .map_err(ddl_error("setting customers' replica identity"))?;
        }
    }

    client
        .execute(
            "SELECT pg_replication_origin_create($1)
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&settings.origin_name()],
        )
        .await
        .map_err(ddl_error("creating the replication origin"))?;
    Ok(altered)
}

/// The relations leadsync's functions act on, by OID (see [`definer`]).
async fn definer_relations(
    client: &Client,
    settings: &Settings,
) -> Result<definer::Relations, SetupError> {
    let qualified =
        |schema: &str, table: &str| format!("{}.{}", quote_ident(schema), quote_ident(table));
    let target: Vec<String> = schema::TARGET_TABLES
        .iter()
        .map(|t| qualified(&settings.target.schema, t))
        .collect();
    let state: Vec<String> = definer::LOADED_STATE_TABLES
        .iter()
        .map(|t| qualified(STATE_SCHEMA, t))
        .collect();
    let referenced: Vec<String> = crate::backfill::foreign_keys::referenced(settings)
        .iter()
        .map(|(s, t)| qualified(s, t))
        .collect();
    Ok(definer::Relations {
        target: oids_of(client, &target).await?,
        state: oids_of(client, &state).await?,
        referenced: oids_of(client, &referenced).await?,
    })
}

/// The OIDs of `tables` (qualified, quoted names), in order; an error naming any missing.
async fn oids_of(client: &Client, tables: &[String]) -> Result<Vec<u32>, SetupError> {
    const STEP: &str = "reading the tables' OIDs";
    let row = client
        .query_one(
            "SELECT array_agg(to_regclass(x.name)::oid ORDER BY x.i),
                    array_agg(x.name ORDER BY x.i) FILTER (WHERE to_regclass(x.name) IS NULL)
             FROM unnest($1::text[]) WITH ORDINALITY AS x(name, i)",
            &[&tables],
        )
        .await
        .map_err(ddl_error(STEP))?;
    let missing: Option<Vec<String>> = row.try_get(1).map_err(ddl_error(STEP))?;
    if let Some(missing) = missing {
        return Err(SetupError::Ddl {
            step: STEP,
            cause: format!("missing tables: {}", missing.join(", ")),
        });
    }
    let found: Vec<Option<u32>> = row.try_get(0).map_err(ddl_error(STEP))?;
    Ok(found.into_iter().flatten().collect())
}

/// Gives `runtime` what [`grants::privileges`] says setup gives it — USAGE on the leadsync
/// schema (and on the target schema when setup created it), its rows of the target tables
/// and of leadsync's tables, its row-level-security policy and leadsync's functions — after
/// taking back what an older setup had handed it (ownership of those tables, CREATE on the
/// leadsync schema). Returns what changed.
async fn hand_over(
    client: &Client,
    settings: &Settings,
    runtime: &str,
) -> Result<Vec<String>, SetupError> {
    let names = RoleNames {
        installer: String::new(),
        runtime: runtime.to_owned(),
    };
    let schemas = schemas_of(settings);
    let mut done = take_back(client, settings, runtime).await?;
    let entries: Vec<grants::Privilege> = grants::privileges()
        .into_iter()
        .filter(|p| {
            p.role == Role::Runtime
                && (p.when == When::BySetup || p.on == On::Schema(grants::Schema::Target))
        })
        .collect();
    let checks: Vec<grants::Check> = [When::BeforeSetup, When::BySetup]
        .into_iter()
        .flat_map(|when| grants::checks_when(Role::Runtime, when, &names, &schemas))
        .collect();
    for p in &entries {
        let mut lacking = Vec::new();
        for check in checks.iter().filter(|c| c.on == p.on && c.why == p.why) {
            let ok: bool = client
                .query_one(&format!("SELECT {}", check.sql), &[])
                .await
                .map_err(ddl_error("reading the runtime role's privileges"))?
                .get(0);
            if !ok {
                lacking.push(check.what.clone());
            }
        }
        if lacking.is_empty() {
            continue;
        }
        let sql = match p.on {
            On::Policy(..) => grants::policy_sql(p, &names, &schemas),
            _ => grants::statement(p, &names, &schemas),
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(ddl_error("granting the runtime role its privileges"))?;
        done.push(format!("{runtime} given {}", lacking.join(", ")));
    }
    Ok(done)
}

/// Takes back from `runtime` what an older setup handed it: ownership of the target tables
/// and of leadsync's tables, and CREATE on the leadsync schema.
async fn take_back(
    client: &Client,
    settings: &Settings,
    runtime: &str,
) -> Result<Vec<String>, SetupError> {
    let mut done = Vec::new();
    let owned: Vec<String> = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND (n.nspname = 'leadsync' OR (n.nspname = $1 AND c.relname = ANY($2::text[])))
               AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $3)
             ORDER BY 1",
            &[
                &settings.target.schema,
                &schema::TARGET_TABLES.to_vec(),
                &runtime,
            ],
        )
        .await
        .map_err(ddl_error("reading table owners"))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(ddl_error("reading table owners"))?;
    if !owned.is_empty() {
        let sql: String = owned
            .iter()
            .map(|t| format!("ALTER TABLE {t} OWNER TO CURRENT_USER;\n"))
            .collect();
        client
            .batch_execute(&sql)
            .await
            .map_err(ddl_error("taking the tables back from the runtime role"))?;
        done.push(format!(
            "{} taken back from {runtime} (the installer owns them now)",
            owned.join(", ")
        ));
    }
    let create: bool = client
        .query_one(
            "SELECT has_schema_privilege($1, 'leadsync', 'CREATE')",
            &[&runtime],
        )
        .await
        .map_err(ddl_error("reading the runtime role's privileges"))?
        .get(0);
    if create {
        client
            .batch_execute(&format!(
                "REVOKE CREATE ON SCHEMA leadsync FROM {}",
                grants::ident(runtime)
            ))
            .await
            .map_err(ddl_error("taking CREATE on schema leadsync back"))?;
        done.push(format!(
            "CREATE on schema leadsync taken back from {runtime}"
        ));
    }
    Ok(done)
}

/// Names of the objects setup manages that exist now, as `kind name`.
async fn catalog_objects(
    client: &Client,
    settings: &Settings,
) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT 'table ' || n.nspname || '.' || c.relname
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname IN ($1, 'leadsync')
             UNION ALL
             SELECT 'index ' || schemaname || '.' || indexname FROM pg_indexes
              WHERE schemaname IN ($1, 'leadsync')
             UNION ALL
             SELECT 'policy ' || tablename || ': ' || policyname FROM pg_policies
              WHERE schemaname = $1
             UNION ALL
             SELECT 'column ' || $2 || '.custom_fields.' || attname
               FROM pg_attribute
              WHERE attrelid = to_regclass(quote_ident($2) || '.custom_fields')
                AND attname IN ('context_type', 'context_config') AND NOT attisdropped
             UNION ALL
             SELECT 'publication ' || pubname FROM pg_publication WHERE pubname = $3
             UNION ALL
             SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname = $4",
            &[
                &settings.target.schema,
                &settings.source.schema,
                &settings.publication.name,
                &settings.origin_name(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
