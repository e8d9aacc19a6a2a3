//! The two database roles leadsync runs as, and every privilege each one needs (SPEC §6):
//! one list, [`privileges`], from which come the SQL that `leadsync setup --print-grants`
//! prints (and `sql/roles.sql`), what `leadsync setup --runtime-role` hands over and
//! checks, and the hints that name a missing privilege when a command hits one.
//!
//! - The **installer** runs `setup` and `teardown`. It owns the legacy tables or is a member
//!   of their owner (adding `custom_fields.context_type` and publishing a table need
//!   ownership; PostgreSQL has no grantable ALTER), creates the target tables, the
//!   `leadsync` schema, the publication and the replication origin, and drops them again.
//! - The **runtime** role runs `run` and every other command. It reads the legacy tables,
//!   writes back the columns reverse sync owns, creates and streams its replication slot
//!   and checkpoints through the replication origin. It *owns* the six target tables and
//!   leadsync's own tables, which setup hands over to it: the first load sets their indexes
//!   and keys aside and rebuilds them, which only an owner may do (and only with CREATE on
//!   the tables' schema), and an owner is not subject to the tables' row-level security —
//!   `BYPASSRLS` would lift every policy of every table in the cluster, ownership lifts
//!   only these.

use crate::db::quote_literal;
use crate::schema::{PUBLISHED_LEGACY_TABLES, STATE_SCHEMA, TARGET_TABLES};
use crate::source::convert::REVERSE_COLUMNS;

/// The installer's name unless told otherwise.
pub const DEFAULT_INSTALLER: &str = "leadsync_installer";
/// The runtime role's name unless told otherwise.
pub const DEFAULT_RUNTIME: &str = "leadsync_runtime";

/// The `contacts` columns reverse sync writes back (SPEC §4): those of
/// [`REVERSE_COLUMNS`](crate::source::convert::REVERSE_COLUMNS), and `updated_at`.
pub const REVERSE_SYNC_COLUMNS: [&str; REVERSE_COLUMNS.len() + 1] = {
    let mut columns = [""; REVERSE_COLUMNS.len() + 1];
    let mut i = 0;
    while i < REVERSE_COLUMNS.len() {
        columns[i] = REVERSE_COLUMNS[i].1;
        i += 1;
    }
    columns[REVERSE_COLUMNS.len()] = "updated_at";
    columns
};

/// The replication-origin functions the installer calls: setup creates the origin, teardown
/// drops it, and leadsync's functions, which the installer owns, bind it and checkpoint
/// through it for the runtime role.
pub const INSTALLER_ORIGIN_FUNCTIONS: [&str; 6] = [
    "pg_replication_origin_create(text)",
    "pg_replication_origin_drop(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
    "pg_replication_origin_xact_reset()",
    "pg_replication_origin_session_progress(boolean)",
];

/// leadsync's tables the runtime role reads and writes.
pub const RUNTIME_STATE_TABLES: [&str; 10] = [
    "sync_state",
    "samples",
    "load_steps",
    "dead_letters",
    "contacts",
    "field_values",
    "fields",
    "resync_requests",
    "reverse_writes",
    "reverse_queue",
];

/// The name of the row-level-security policy that lets the runtime role see and write
/// every row of the target tables.
pub const RUNTIME_POLICY: &str = "leadsync daemon";

/// Which of the two roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Installer,
    Runtime,
}

/// A schema, by the part it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `source.schema`: the legacy tables.
    Source,
    /// `target.schema`: the six new tables.
    Target,
    /// `auth`: `auth.users` and `auth.uid()`, which the target tables refer to.
    Auth,
    /// `leadsync`: the daemon's own state.
    State,
}

/// What a privilege is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// A role attribute such as `LOGIN` or `REPLICATION` (`privilege` names it).
    Attribute,
    /// Membership in the other role.
    MemberOf(Role),
    /// The database connected to.
    Database,
    Schema(Schema),
    Tables(Schema, &'static [&'static str]),
    Columns(Schema, &'static str, &'static [&'static str]),
    Functions(&'static [&'static str]),
    /// Ownership of the legacy tables, or membership in their owner role.
    LegacyOwnership,
    /// A row-level-security policy, [`RUNTIME_POLICY`], on these tables: every row, for
    /// every command, to the role.
    Policy(Schema, &'static [&'static str]),
}

/// When a privilege is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// By a superuser, with the SQL that `--print-grants` prints, before setup.
    BeforeSetup,
    /// By `leadsync setup --runtime-role`, as the installer, once setup made the objects.
    BySetup,
}

/// One entry of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privilege {
    pub role: Role,
    /// `SELECT`, `USAGE, CREATE`, `EXECUTE`, `LOGIN`, … (empty for memberships and
    /// ownership).
    pub privilege: &'static str,
    pub on: On,
    pub when: When,
    /// What the role does with it.
    pub why: &'static str,
}

/// Every privilege of both roles: the one list.
pub fn privileges() -> Vec<Privilege> {
    use Role::*;
    use When::*;
    let p = |role, privilege, on, when, why| Privilege {
        role,
        privilege,
        on,
        when,
        why,
    };
    vec![
        // The installer.
        p(Installer, "LOGIN", On::Attribute, BeforeSetup, "connects"),
        p(
            Installer,
            "REPLICATION",
            On::Attribute,
            BeforeSetup,
            "teardown drops the replication slot",
        ),
        p(
            Installer,
            "",
            On::MemberOf(Runtime),
            BeforeSetup,
            "teardown ends the runtime role's walsender that holds the slot; setup takes back \
             tables an older setup had handed to the runtime role",
        ),
        p(
            Installer,
            "CONNECT, CREATE",
            On::Database,
            BeforeSetup,
            "connects; creates the leadsync schema and the publication",
        ),
        p(
            Installer,
            "USAGE",
            On::Schema(Schema::Source),
            BeforeSetup,
            "reaches the legacy tables",
        ),
        p(
            Installer,
            "",
            On::LegacyOwnership,
            BeforeSetup,
            "adding custom_fields.context_type and publishing the legacy tables need their \
             owner (PostgreSQL has no grantable ALTER)",
        ),
        p(
            Installer,
            "USAGE, CREATE",
            On::Schema(Schema::Target),
            BeforeSetup,
            "creates the target tables, and owns them",
        ),
        p(
            Installer,
            "REFERENCES",
            On::Tables(Schema::Source, &["workspaces", "custom_fields"]),
            BeforeSetup,
            "foreign keys of the target tables (which the first load sets aside and adds back \
             through the installer's functions)",
        ),
        p(
            Installer,
            "SELECT",
            On::Tables(Schema::Source, &["workspace_users"]),
            BeforeSetup,
            "the target tables' row-level-security policies read it",
        ),
        p(
            Installer,
            "USAGE",
            On::Schema(Schema::Auth),
            BeforeSetup,
            "the target tables refer to auth.users and their policies call auth.uid()",
        ),
        p(
            Installer,
            "REFERENCES",
            On::Tables(Schema::Auth, &["users"]),
            BeforeSetup,
            "foreign keys of the target tables",
        ),
        p(
            Installer,
            "EXECUTE",
            On::Functions(&INSTALLER_ORIGIN_FUNCTIONS),
            BeforeSetup,
            "setup creates the replication origin (the checkpoint), teardown drops it; the \
             installer's functions bind it and checkpoint through it for the runtime role, \
             only for leadsync's own origin",
        ),
        // The runtime role.
        p(Runtime, "LOGIN", On::Attribute, BeforeSetup, "connects"),
        p(
            Runtime,
            "REPLICATION",
            On::Attribute,
            BeforeSetup,
            "creates its replication slot on the first run and streams from it (REPLICATION \
             lets a role decode every change of every table: see docs/roles-and-tls.md for the \
             pg_hba.conf lines that keep it to logical replication of this database)",
        ),
        p(Runtime, "CONNECT", On::Database, BeforeSetup, "connects"),
        p(
            Runtime,
            "USAGE",
            On::Schema(Schema::Source),
            BeforeSetup,
            "reaches the legacy tables",
        ),
        p(
            Runtime,
            "SELECT",
            On::Tables(Schema::Source, &PUBLISHED_LEGACY_TABLES),
            BeforeSetup,
            "the first load, resync, validate and report read them",
        ),
        p(
            Runtime,
            "SELECT",
            On::Tables(Schema::Source, &["workspaces"]),
            BeforeSetup,
            "assess reports per workspace, by name",
        ),
        p(
            Runtime,
            "UPDATE",
            On::Columns(Schema::Source, "contacts", &REVERSE_SYNC_COLUMNS),
            BeforeSetup,
            "reverse sync writes edits of migrated customers back to their contacts",
        ),
        p(
            Runtime,
            "USAGE",
            On::Schema(Schema::Target),
            BeforeSetup,
            "reaches the target tables (USAGE only: a role with CREATE on a schema others \
             search could plant objects their queries pick up)",
        ),
        p(
            Runtime,
            "USAGE",
            On::Schema(Schema::State),
            BySetup,
            "reaches leadsync's own tables and functions",
        ),
        p(
            Runtime,
            "SELECT, INSERT, UPDATE, DELETE",
            On::Tables(Schema::Target, &TARGET_TABLES),
            BySetup,
            "writes the rows it projects; the installer owns the tables",
        ),
        p(
            Runtime,
            "",
            On::Policy(Schema::Target, &TARGET_TABLES),
            BySetup,
            "sees and writes every row despite the tables' row-level security, and only these \
             tables' (BYPASSRLS would lift every policy of every table in the cluster; owning \
             the tables would let it put triggers on them that the application runs)",
        ),
        p(
            Runtime,
            "SELECT, INSERT, UPDATE, DELETE",
            On::Tables(Schema::State, &RUNTIME_STATE_TABLES),
            BySetup,
            "its checkpoint state, dead letters, resync requests, reverse-sync queue and \
             history",
        ),
        p(
            Runtime,
            "TRUNCATE",
            On::Tables(Schema::State, &crate::definer::LOADED_STATE_TABLES),
            BySetup,
            "the first load empties leadsync's copy of the legacy rows",
        ),
        p(
            Runtime,
            "SELECT",
            On::Tables(Schema::State, &["deferred_constraints"]),
            BySetup,
            "reads which foreign keys a first load set aside",
        ),
        p(
            Runtime,
            "EXECUTE",
            On::Functions(&crate::definer::RUNTIME_FUNCTIONS),
            BySetup,
            "the installer's functions: bind leadsync's replication origin and checkpoint \
             through it; set the first load's keys, indexes and row-level security aside and put \
             them back (only a table's owner may)",
        ),
    ]
}

/// The two role names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNames {
    pub installer: String,
    pub runtime: String,
}

impl Default for RoleNames {
    fn default() -> Self {
        RoleNames {
            installer: DEFAULT_INSTALLER.into(),
            runtime: DEFAULT_RUNTIME.into(),
        }
    }
}

impl RoleNames {
    pub fn name(&self, role: Role) -> &str {
        match role {
            Role::Installer => &self.installer,
            Role::Runtime => &self.runtime,
        }
    }
}

/// Where the schemas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemas {
    pub source: String,
    pub target: String,
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas {
            source: "public".into(),
            target: "public".into(),
        }
    }
}

impl Schemas {
    pub fn name(&self, schema: Schema) -> &str {
        match schema {
            Schema::Source => &self.source,
            Schema::Target => &self.target,
            Schema::Auth => "auth",
            Schema::State => STATE_SCHEMA,
        }
    }
}

/// An identifier, quoted only where it has to be.
pub fn ident(name: &str) -> String {
    const RESERVED: [&str; 11] = [
        "all",
        "user",
        "group",
        "role",
        "table",
        "select",
        "order",
        "from",
        "to",
        "grant",
        "authorization",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED.contains(&name);
    if plain {
        name.to_owned()
    } else {
        crate::db::quote_ident(name)
    }
}

fn table(schemas: &Schemas, schema: Schema, name: &str) -> String {
    format!("{}.{}", ident(schemas.name(schema)), ident(name))
}

/// `-- why` wrapped at 92 columns.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("--");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 92 && line.len() > 2 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("--");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The statement that gives `p`, as `--print-grants` shows it (setup runs a policy entry
/// through [`policy_sql`], which also corrects an existing policy).
pub fn statement(p: &Privilege, names: &RoleNames, schemas: &Schemas) -> String {
    let role = ident(names.name(p.role));
    match p.on {
        On::Attribute => format!("ALTER ROLE {role} {};\n", p.privilege),
        On::MemberOf(other) => format!("GRANT {} TO {role};\n", ident(names.name(other))),
        On::Database => format!(
            "DO $leadsync$ BEGIN\n  EXECUTE format('GRANT {} ON DATABASE %I TO %s', \
             current_database(), {});\nEND $leadsync$;\n",
            p.privilege,
            quote_literal(&role),
        ),
        On::Schema(schema) => {
            let grant = format!(
                "GRANT {} ON SCHEMA {} TO {role};\n",
                p.privilege,
                ident(schemas.name(schema))
            );
            if schema == Schema::Target && schemas.target != schemas.source {
                // The target schema may not exist yet: setup then creates it, as its owner.
                format!(
                    "DO $leadsync$ BEGIN\n  IF EXISTS (SELECT FROM pg_namespace WHERE nspname = \
                     {}) THEN\n    {}  END IF;\nEND $leadsync$;\n",
                    quote_literal(schemas.name(schema)),
                    grant.trim_end().to_owned() + "\n"
                )
            } else {
                grant
            }
        }
        On::Tables(schema, tables) => format!(
            "GRANT {} ON {} TO {role};\n",
            p.privilege,
            tables
                .iter()
                .map(|t| table(schemas, schema, t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        On::Columns(schema, name, columns) => format!(
            "GRANT {} ({}) ON {} TO {role};\n",
            p.privilege,
            columns.join(", "),
            table(schemas, schema, name)
        ),
        On::Functions(functions) => format!(
            "GRANT {} ON FUNCTION\n    {}\n  TO {role};\n",
            p.privilege,
            functions.join(",\n    ")
        ),
        On::LegacyOwnership => {
            let tables = PUBLISHED_LEGACY_TABLES
                .iter()
                .map(|t| quote_literal(t))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "DO $leadsync$\nDECLARE\n  t record;\nBEGIN\n  FOR t IN\n    SELECT c.relname, \
                 r.rolname, r.rolsuper\n    FROM pg_class c\n    JOIN pg_namespace n ON n.oid = \
                 c.relnamespace\n    JOIN pg_roles r ON r.oid = c.relowner\n    WHERE n.nspname \
                 = {source} AND c.relname IN ({tables})\n  LOOP\n    IF pg_has_role({installer}, \
                 t.rolname, 'USAGE') THEN\n      CONTINUE;\n    ELSIF t.rolsuper THEN\n      \
                 RAISE WARNING 'table %.% is owned by the superuser %: give it to the \
                 application''s owner role (ALTER TABLE ... OWNER TO ...) and run this again, or \
                 run leadsync setup as a superuser', {source}, t.relname, t.rolname;\n    ELSE\n      \
                 EXECUTE format('GRANT %I TO %I', t.rolname, {installer});\n    END IF;\n  END \
                 LOOP;\nEND $leadsync$;\n",
                source = quote_literal(&schemas.source),
                installer = quote_literal(names.name(p.role)),
            )
        }
        On::Policy(schema, tables) => tables
            .iter()
            .map(|t| {
                format!(
                    "CREATE POLICY {} ON {} FOR ALL TO {role} USING (true) WITH CHECK (true);\n",
                    crate::db::quote_ident(RUNTIME_POLICY),
                    table(schemas, schema, t)
                )
            })
            .collect(),
    }
}

/// What setup runs for a [`On::Policy`] entry: each policy created, or (when a policy of
/// that name is there already) set to exactly what it should be.
pub fn policy_sql(p: &Privilege, names: &RoleNames, schemas: &Schemas) -> String {
    let On::Policy(schema, tables) = p.on else {
        return String::new();
    };
    let role = ident(names.name(p.role));
    let policy = crate::db::quote_ident(RUNTIME_POLICY);
    let mut sql = String::from("DO $leadsync$ BEGIN\n");
    for t in tables {
        let qualified = table(schemas, schema, t);
        sql.push_str(&format!(
            "  IF EXISTS (SELECT FROM pg_policy WHERE polrelid = {}::regclass AND polname = {}) \
             THEN\n    ALTER POLICY {policy} ON {qualified} TO {role} USING (true) WITH CHECK \
             (true);\n  ELSE\n    CREATE POLICY {policy} ON {qualified} FOR ALL TO {role} USING \
             (true) WITH CHECK (true);\n  END IF;\n",
            quote_literal(&qualified),
            quote_literal(RUNTIME_POLICY),
        ));
    }
    sql.push_str("END $leadsync$;\n");
    sql
}

/// The SQL `leadsync setup --print-grants` prints: the roles and everything a superuser
/// grants them before setup, and (as comments) what setup itself does for the runtime role.
pub fn roles_sql(names: &RoleNames, schemas: &Schemas) -> String {
    let list = privileges();
    let mut sql = String::new();
    let installer = &names.installer;
    let runtime = &names.runtime;
    sql.push_str(&format!(
        "-- leadsync: the installer and runtime database roles, and every privilege they need.\n\
         --\n\
         -- Printed by `leadsync setup --print-grants --installer-role {installer} --runtime-role {runtime}`;\n\
         -- sql/roles.sql is this text for the default role names and schemas. Legacy tables are\n\
         -- in schema `{}`, target tables in schema `{}`.\n\
         --\n\
         -- 1. As a superuser, connected to the legacy database, run this file:\n\
         --        psql -v ON_ERROR_STOP=1 -d DATABASE -f roles.sql\n\
         --    It can run again: what is in place stays as it is. It sets no passwords: give\n\
         --    each role one (psql: \\password {runtime}) or authenticate it otherwise.\n\
         -- 2. As the installer: leadsync setup --runtime-role {runtime}\n\
         --    It creates the target tables and the leadsync schema and does the last part\n\
         --    below for the runtime role.\n\
         -- 3. As the runtime role: leadsync run, and every other command.\n\n",
        schemas.source, schemas.target
    ));
    sql.push_str("BEGIN;\n\n");
    sql.push_str(&format!(
        "DO $leadsync$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {i}) THEN\n    \
         CREATE ROLE {ii};\n  END IF;\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {r}) \
         THEN\n    CREATE ROLE {ri};\n  END IF;\nEND $leadsync$;\n",
        i = quote_literal(installer),
        ii = ident(installer),
        r = quote_literal(runtime),
        ri = ident(runtime),
    ));
    for (role, title) in [
        (
            Role::Installer,
            format!("Installer {installer}: leadsync setup and leadsync teardown."),
        ),
        (
            Role::Runtime,
            format!("Runtime role {runtime}: leadsync run and every other command."),
        ),
    ] {
        sql.push_str(&format!("\n{}", comment(&title)));
        for p in list
            .iter()
            .filter(|p| p.role == role && p.when == When::BeforeSetup)
        {
            // One schema playing two parts needs one grant.
            if let On::Schema(Schema::Target) = p.on
                && schemas.target == schemas.source
                && p.privilege == "USAGE"
            {
                continue;
            }
            sql.push('\n');
            sql.push_str(&comment(p.why));
            sql.push_str(&statement(p, names, schemas));
        }
    }
    sql.push_str("\nCOMMIT;\n\n");
    sql.push_str(&comment(&format!(
        "Done by `leadsync setup --runtime-role {runtime}` as the installer, once the objects \
         exist (shown here, not run):"
    )));
    for p in list.iter().filter(|p| p.when == When::BySetup) {
        sql.push_str("--\n");
        sql.push_str(&comment(p.why));
        for line in statement(p, names, schemas).lines() {
            sql.push_str(&format!("--   {line}\n"));
        }
    }
    sql
}

/// One privilege a role should have.
#[derive(Debug, Clone)]
pub struct Check {
    /// What it is, phrased for a message.
    pub what: String,
    pub why: &'static str,
    /// What it is on.
    pub on: On,
    /// An SQL expression, true when the role has it.
    pub sql: String,
}

/// The privileges `role` should have before setup, each with the SQL that checks it.
pub fn checks(role: Role, names: &RoleNames, schemas: &Schemas) -> Vec<Check> {
    checks_when(role, When::BeforeSetup, names, schemas)
}

/// The privileges `role` gets `when`, each with the SQL that checks it.
pub fn checks_when(role: Role, when: When, names: &RoleNames, schemas: &Schemas) -> Vec<Check> {
    let name = quote_literal(names.name(role));
    let mut out = Vec::new();
    for p in privileges()
        .iter()
        .filter(|p| p.role == role && p.when == when)
    {
        let mut add = |what: String, sql: String| {
            out.push(Check {
                what,
                why: p.why,
                on: p.on,
                sql,
            })
        };
        match p.on {
            On::Attribute => {
                let column = match p.privilege {
                    "LOGIN" => "rolcanlogin",
                    "REPLICATION" => "rolreplication",
                    _ => continue,
                };
                add(
                    format!("the {} attribute", p.privilege),
                    format!(
                        "COALESCE((SELECT {column} OR rolsuper FROM pg_roles WHERE rolname = \
                         {name}), false)"
                    ),
                );
            }
            On::MemberOf(other) => add(
                format!("membership in role `{}`", names.name(other)),
                format!(
                    "pg_has_role({name}, {}, 'MEMBER')",
                    quote_literal(names.name(other))
                ),
            ),
            On::Database => {
                for privilege in p.privilege.split(", ") {
                    add(
                        format!("{privilege} on the database"),
                        format!(
                            "has_database_privilege({name}, current_database(), '{privilege}')"
                        ),
                    );
                }
            }
            On::Schema(schema) => {
                let schema_name = schemas.name(schema);
                for privilege in p.privilege.split(", ") {
                    add(
                        format!("{privilege} on schema `{schema_name}`"),
                        format!(
                            "COALESCE((SELECT has_schema_privilege({name}, oid, '{privilege}') \
                             FROM pg_namespace WHERE nspname = {}), false)",
                            quote_literal(schema_name)
                        ),
                    );
                }
            }
            On::Tables(schema, tables) => {
                for t in tables {
                    let qualified = format!("{}.{t}", schemas.name(schema));
                    // has_table_privilege with a list is true when any one is held.
                    let all = p
                        .privilege
                        .split(", ")
                        .map(|privilege| {
                            format!("has_table_privilege({name}, c.oid, '{privilege}')")
                        })
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    add(
                        format!("{} on `{qualified}`", p.privilege),
                        format!(
                            "COALESCE((SELECT {all} FROM pg_class c JOIN pg_namespace n ON \
                             n.oid = c.relnamespace WHERE n.nspname = {} AND c.relname = {}), \
                             false)",
                            quote_literal(schemas.name(schema)),
                            quote_literal(t)
                        ),
                    );
                }
            }
            On::Policy(schema, tables) => {
                for t in tables {
                    let qualified = format!("{}.{t}", schemas.name(schema));
                    add(
                        format!("the policy \"{RUNTIME_POLICY}\" on `{qualified}`"),
                        format!(
                            "EXISTS (SELECT FROM pg_policy p JOIN pg_class c ON c.oid = \
                             p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE \
                             n.nspname = {} AND c.relname = {} AND p.polname = {} AND \
                             p.polcmd = '*' AND p.polpermissive AND p.polroles = ARRAY[(SELECT \
                             oid FROM pg_roles WHERE rolname = {name})] AND \
                             pg_get_expr(p.polqual, p.polrelid) = 'true' AND \
                             pg_get_expr(p.polwithcheck, p.polrelid) = 'true')",
                            quote_literal(schemas.name(schema)),
                            quote_literal(t),
                            quote_literal(RUNTIME_POLICY),
                        ),
                    );
                }
            }
            On::Columns(schema, t, columns) => {
                let qualified = format!("{}.{t}", schemas.name(schema));
                let all = columns
                    .iter()
                    .map(|c| {
                        format!(
                            "has_column_privilege({name}, c.oid, {}, '{}')",
                            quote_literal(c),
                            p.privilege
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
                add(
                    format!("{} ({}) on `{qualified}`", p.privilege, columns.join(", ")),
                    format!(
                        "COALESCE((SELECT {all} FROM pg_class c JOIN pg_namespace n ON n.oid = \
                         c.relnamespace WHERE n.nspname = {} AND c.relname = {}), false)",
                        quote_literal(schemas.name(schema)),
                        quote_literal(t)
                    ),
                );
            }
            On::Functions(functions) => {
                for f in functions {
                    add(
                        format!("EXECUTE on {f}"),
                        format!(
                            "has_function_privilege({name}, {}, 'EXECUTE')",
                            quote_literal(f)
                        ),
                    );
                }
            }
            // Checked by setup itself, which knows whether the schemas exist.
            On::LegacyOwnership => {}
        }
    }
    out
}

/// What to grant, for the message of a server's "permission denied" (SQLSTATE 42501)
/// error; `None` when the message names nothing leadsync grants.
pub fn privilege_hint(message: &str) -> Option<String> {
    const PRINT: &str = "`leadsync setup --print-grants` prints every grant leadsync needs";
    let after = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .map(|rest| rest.trim().trim_matches('"').to_owned())
    };
    let is_target_or_state = |name: &str| {
        let bare = name.rsplit('.').next().unwrap_or(name);
        TARGET_TABLES.contains(&bare)
            || name.starts_with("leadsync.")
            || [
                "sync_state",
                "dead_letters",
                "fields",
                "field_values",
                "resync_requests",
                "deferred_constraints",
            ]
            .contains(&bare)
    };
    let handover = "the runtime role gets its privileges on the target tables and on \
                    leadsync's own tables and functions from `leadsync setup --runtime-role \
                    ROLE`: run it as the installer";
    if message.contains("replication role") || message.contains("start WAL sender") {
        return Some(format!(
            "Missing privilege: the REPLICATION attribute (ALTER ROLE ... REPLICATION, as a \
             superuser); {PRINT}"
        ));
    }
    if let Some(name) = after("permission denied for function") {
        // The server names the function unqualified.
        if crate::definer::RUNTIME_FUNCTIONS.iter().any(|f| {
            f.split('(')
                .next()
                .and_then(|q| q.strip_prefix("leadsync."))
                == Some(name.as_str())
        }) {
            return Some(format!(
                "Missing privilege: EXECUTE on function {name}; {handover}"
            ));
        }
        let signature = INSTALLER_ORIGIN_FUNCTIONS
            .iter()
            .find(|f| f.split('(').next() == Some(name.as_str()))
            .map(|f| (*f).to_owned())
            .unwrap_or_else(|| format!("{name}(...)"));
        return Some(format!(
            "Missing privilege: EXECUTE on function {name} (GRANT EXECUTE ON FUNCTION \
             {signature} TO the installer role, as a superuser, and run `leadsync setup` again); \
             {PRINT}"
        ));
    }
    if let Some(name) = after("permission denied for schema") {
        if name == STATE_SCHEMA {
            return Some(format!(
                "Missing privilege: USAGE on schema {name}; {handover}"
            ));
        }
        return Some(format!(
            "Missing privilege: USAGE on schema {name}; {PRINT}"
        ));
    }
    for prefix in [
        "permission denied for table",
        "permission denied for relation",
    ] {
        if let Some(name) = after(prefix) {
            if is_target_or_state(&name) {
                return Some(format!("Missing privilege on {name}: {handover}"));
            }
            let wanted: Vec<String> = privileges()
                .iter()
                .filter_map(|p| match p.on {
                    On::Tables(_, tables) if tables.contains(&name.as_str()) => Some(format!(
                        "the {} role needs {} on it",
                        role_word(p.role),
                        p.privilege
                    )),
                    On::Columns(_, t, columns) if t == name => Some(format!(
                        "the {} role needs {} ({}) on it",
                        role_word(p.role),
                        p.privilege,
                        columns.join(", ")
                    )),
                    _ => None,
                })
                .collect();
            let what = if wanted.is_empty() {
                format!("leadsync grants nothing on {name}")
            } else {
                wanted.join("; ")
            };
            return Some(format!(
                "Missing privilege on table {name}: {what}; {PRINT}"
            ));
        }
    }
    if let Some(name) = after("permission denied for database") {
        return Some(format!(
            "Missing privilege: CONNECT (and, for setup, CREATE) on database {name}; {PRINT}"
        ));
    }
    if let Some(rest) = message.strip_prefix("must be owner of ") {
        let name = rest.split_whitespace().last().unwrap_or(rest);
        if is_target_or_state(name) || name.starts_with("idx_") {
            return Some(format!(
                "Only the owner of {name}, the installer, may do this; leadsync does it through \
                 the installer's functions, and {handover}"
            ));
        }
        return Some(format!(
            "Only the owner of {name} (or a member of its owner role) may do this: run it as \
             the installer; {PRINT}"
        ));
    }
    None
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Installer => "installer",
        Role::Runtime => "runtime",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_file_is_the_printed_sql() {
        let printed = roles_sql(&RoleNames::default(), &Schemas::default());
        let file = include_str!("../sql/roles.sql");
        assert!(
            file == printed,
            "sql/roles.sql differs from `leadsync setup --print-grants`; regenerate it with \
             `cargo run -- setup --print-grants > sql/roles.sql`"
        );
    }

    #[test]
    fn runtime_role_gets_what_the_spec_lists() {
        let sql = roles_sql(&RoleNames::default(), &Schemas::default());
        for needed in [
            "ALTER ROLE leadsync_runtime LOGIN;",
            "ALTER ROLE leadsync_runtime REPLICATION;",
            "GRANT SELECT ON public.contacts, public.contact_custom_fields, public.custom_fields \
             TO leadsync_runtime;",
            "GRANT UPDATE (firstname, lastname, email, phone_number, st_address, city, state, \
             zip, updated_at) ON public.contacts TO leadsync_runtime;",
            "GRANT leadsync_runtime TO leadsync_installer;",
            "GRANT USAGE ON SCHEMA public TO leadsync_runtime;",
            "--   GRANT USAGE ON SCHEMA leadsync TO leadsync_runtime;",
            "--   GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers, public.leads,",
            "--   CREATE POLICY \"leadsync daemon\" ON public.customers FOR ALL TO leadsync_runtime \
             USING (true) WITH CHECK (true);",
            "--       leadsync.bind_origin(text),",
        ] {
            assert!(sql.contains(needed), "`{needed}` missing from:\n{sql}");
        }
        // The installer gets the origin functions, for leadsync's functions it owns.
        let installer =
            &sql[sql.find("-- Installer").unwrap()..sql.find("-- Runtime role").unwrap()];
        for f in INSTALLER_ORIGIN_FUNCTIONS {
            assert!(installer.contains(f), "{f}");
        }
        let runtime = &sql[sql.find("-- Runtime role").unwrap()..];
        let statements: String = runtime
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        // Nothing that lifts every policy, no superuser, no CREATE anywhere, no ownership,
        // no origin function of its own.
        for never in [
            "BYPASSRLS",
            "SUPERUSER",
            "CREATE",
            "OWNER",
            "pg_replication_origin",
            "REFERENCES",
        ] {
            assert!(!statements.contains(never), "{never} in:\n{statements}");
        }
        // No row writes granted on the legacy tables beyond reverse sync's columns.
        assert!(!statements.contains("INSERT") && !statements.contains("DELETE"));
    }

    #[test]
    fn names_and_schemas_are_quoted_where_needed() {
        let names = RoleNames {
            installer: "CRM Installer".into(),
            runtime: "user".into(),
        };
        let schemas = Schemas {
            source: "crm".into(),
            target: "crm_new".into(),
        };
        let sql = roles_sql(&names, &schemas);
        assert!(
            sql.contains("GRANT \"user\" TO \"CRM Installer\";"),
            "{sql}"
        );
        assert!(sql.contains("GRANT SELECT ON crm.contacts"), "{sql}");
        assert!(sql.contains("nspname = 'crm_new'"), "{sql}");
        assert!(
            sql.contains("CREATE POLICY \"leadsync daemon\" ON crm_new.leads FOR ALL TO \"user\""),
            "{sql}"
        );
    }

    #[test]
    fn permission_errors_name_what_to_grant() {
        let hint = |m: &str| privilege_hint(m).unwrap_or_default();
        assert!(
            hint("permission denied for function pg_replication_origin_session_setup")
                .contains("GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text)")
        );
        assert!(hint("permission denied for function bind_origin").contains("--runtime-role"));
        assert!(hint("permission denied for table contacts").contains("SELECT"));
        assert!(hint("permission denied for table workspace_users").contains("installer role"));
        assert!(hint("permission denied for table customers").contains("--runtime-role"));
        assert!(hint("must be owner of table leads").contains("--runtime-role"));
        assert!(hint("must be owner of index idx_leads_source").contains("--runtime-role"));
        assert!(hint("must be owner of table contacts").contains("installer"));
        assert!(hint("permission denied for schema leadsync").contains("--runtime-role"));
        assert!(
            hint("must be superuser or replication role to use replication slots")
                .contains("REPLICATION")
        );
        assert_eq!(privilege_hint("relation \"x\" does not exist"), None);
    }
}
