//! The two database roles against a real PostgreSQL: the SQL of `leadsync setup
//! --print-grants` creates them, the installer runs `setup` and `teardown`, the daemon runs
//! as the runtime role and streams, and the runtime role can do nothing more than its list
//! says. A missing privilege is named in the error.
#![cfg(feature = "test-utils")]

use std::process::Output;
use std::time::Duration;

use leadsync::cmd::setup::{Problem, SetupError, SetupOptions, grants_sql, run_setup_with};
use leadsync::config::Settings;
use leadsync::testing::{Daemon, TestDb, daemon_env};
use secrecy::SecretString;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

/// Role names of one test: roles are per cluster, and the cluster is shared.
struct Roles {
    installer: String,
    runtime: String,
    owner: String,
}

impl Roles {
    fn for_db(db: &TestDb) -> Roles {
        let suffix = &db.slot[3..];
        Roles {
            installer: format!("inst_{suffix}"),
            runtime: format!("run_{suffix}"),
            owner: format!("crm_{suffix}"),
        }
    }

    /// Drops the roles and what they own here (best effort; the database goes afterwards).
    async fn drop(&self, admin: &Client) {
        let all = format!("{}, {}, {}", self.installer, self.runtime, self.owner);
        let _ = admin
            .batch_execute(&format!(
                "DROP OWNED BY {all} CASCADE; DROP ROLE IF EXISTS {all}"
            ))
            .await;
    }
}

/// Runs the binary with `args` and leadsync's environment for `db` as `user`.
fn leadsync(db: &TestDb, user: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("LEADSYNC_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env_as(db, user) {
        cmd.env(k, v);
    }
    cmd.output().expect("run leadsync")
}

fn env_as(db: &TestDb, user: &str) -> Vec<(String, String)> {
    let mut env = daemon_env(db);
    for (k, v) in env.iter_mut() {
        if k == "LEADSYNC_SOURCE__URL" {
            *v = db.url_as(user);
        }
    }
    // The daemon's and `ctl`'s: one per database.
    let pidfile = leadsync::testing::scratch_dir().join(format!("{}.pid", db.slot));
    env.push((
        "LEADSYNC_CONTROL__PIDFILE".into(),
        pidfile.display().to_string(),
    ));
    env
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn connect_as(db: &TestDb, user: &str) -> Client {
    leadsync::db::connect(&SecretString::from(db.url_as(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `sql` as `client` and returns the error text, which must carry SQLSTATE 42501.
async fn denied(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("`{sql}` was allowed"),
        Err(e) => {
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("42501"),
                "`{sql}` failed otherwise: {e}"
            );
            leadsync::db::error_text(&e)
        }
    }
}

/// Legacy writes of every kind, as the application (the superuser here) makes them.
async fn legacy_writes(admin: &Client) {
    admin
        .batch_execute(
            "UPDATE contacts SET lead_status = 'qualified', tags = 'solar roof'
              WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 20);
             UPDATE contacts SET appointment_date = NULL
              WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 10);
             DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 5 OFFSET 30);
             INSERT INTO contacts (workspace_id, firstname, lastname, email, lead_status,
                                   created_at, updated_at)
             SELECT workspace_id, 'New', 'Contact', 'new@example.com', 'new', now(), now()
             FROM contacts LIMIT 3;",
        )
        .await
        .expect("legacy writes");
}

#[tokio::test]
async fn runtime_role_streams_with_only_its_grants_and_can_do_nothing_more() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = Roles::for_db(&db);
    let settings = db.settings();
    // As in production, the legacy tables belong to the application's own role.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {owner} NOLOGIN;
             ALTER TABLE contacts OWNER TO {owner};
             ALTER TABLE contact_custom_fields OWNER TO {owner};
             ALTER TABLE custom_fields OWNER TO {owner};",
            owner = roles.owner
        ))
        .await
        .unwrap();
    leadsync::fixtures::generate_demo_data(&admin, 400)
        .await
        .unwrap();

    // The printed SQL, as a superuser; a second run changes nothing.
    let sql = grants_sql(&settings, &roles.installer, &roles.runtime);
    admin.batch_execute(&sql).await.expect("roles SQL");
    admin.batch_execute(&sql).await.expect("roles SQL, again");
    let attrs: (bool, bool, bool, bool) = {
        let row = admin
            .query_one(
                "SELECT rolsuper, rolbypassrls, rolreplication, rolcanlogin FROM pg_roles
                 WHERE rolname = $1",
                &[&roles.runtime],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!(attrs, (false, false, true, true), "runtime role attributes");

    // setup as the installer, handing the runtime role its tables; a second run changes
    // nothing.
    let out = leadsync(
        &db,
        &roles.installer,
        &["setup", "--runtime-role", &roles.runtime],
    );
    assert!(
        out.status.success(),
        "setup as the installer: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} given", roles.runtime)),
        "{}",
        text(&out)
    );
    let out = leadsync(
        &db,
        &roles.installer,
        &["setup", "--runtime-role", &roles.runtime],
    );
    assert!(out.status.success(), "setup again: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing changed"),
        "{}",
        text(&out)
    );
    let owners: Vec<(String, String)> = admin
        .query(
            "SELECT c.relnamespace::regnamespace::text || '.' || c.relname, r.rolname::text
             FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
             WHERE c.relkind = 'r' AND (c.relnamespace = 'leadsync'::regnamespace
                OR c.relname IN ('customers', 'leads', 'appointments', 'customer_custom_fields',
                                 'lead_custom_fields', 'appointment_custom_fields'))
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        owners
            .iter()
            .filter(|(t, _)| t.starts_with("public."))
            .count(),
        6,
        "{owners:?}"
    );
    assert!(
        owners.iter().any(|(t, _)| t == "leadsync.sync_state"),
        "{owners:?}"
    );
    // The installer owns them all; the runtime role owns nothing and can create nothing.
    assert!(
        owners.iter().all(|(_, owner)| owner == &roles.installer),
        "{owners:?}"
    );
    let footholds = leadsync::cmd::setup::runtime_footholds(&admin, &settings, &roles.runtime)
        .await
        .unwrap();
    assert!(footholds.is_empty(), "{footholds:?}");
    leadsync::fixtures::assign_demo_field_contexts(&admin)
        .await
        .unwrap();

    // The daemon, as the runtime role: first load, then the stream.
    let mut daemon = Daemon::start(BIN, &env_as(&db, &roles.runtime));
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&settings).await;
    // The installer's functions set the keys into legacy tables aside and add them back.
    for needle in [
        "set aside for the first load",
        "keys=18",
        "added back and validated keys=18",
    ] {
        assert!(daemon.log().contains(needle), "{}", daemon.log());
    }
    legacy_writes(&admin).await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&settings).await;
    // Reverse sync writes an edit of a migrated customer back to its contact, as the
    // runtime role, through its column grants.
    let id: uuid::Uuid = admin
        .query_one(
            "SELECT cst_id FROM customers WHERE deleted_at IS NULL ORDER BY cst_id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .execute(
            "UPDATE customers SET firstname = 'Edited', city = 'Reno' WHERE cst_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + CATCH_UP;
    loop {
        let row = admin
            .query_one("SELECT firstname, city FROM contacts WHERE id = $1", &[&id])
            .await
            .unwrap();
        let got: (Option<String>, Option<String>) = (row.get(0), row.get(1));
        if got == (Some("Edited".into()), Some("Reno".into())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit did not reach its contact: {got:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&settings).await;
    assert!(
        daemon.try_wait().is_none(),
        "daemon exited:\n{}",
        daemon.log()
    );
    // The daemon's sessions (the test's own, as the superuser, aside), the walsender
    // included, are the runtime role's.
    let sessions: Vec<(String, String)> = admin
        .query(
            "SELECT usename::text, backend_type FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'leadsync'
               AND usename <> 'postgres'
             ORDER BY 2, 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        sessions.iter().any(|(_, kind)| kind == "walsender") && sessions.len() >= 2,
        "{sessions:?}"
    );
    assert!(
        sessions.iter().all(|(user, _)| user == &roles.runtime),
        "{sessions:?}"
    );

    // The other commands, as the runtime role.
    for args in [
        &["validate", "--wait-seconds", "5"][..],
        &["report", "--wait-seconds", "5"],
        &["dlq", "list"],
        &["ctl", "status"],
        &["assess"],
        &["resync", "--no-wait"],
    ] {
        let out = leadsync(&db, &roles.runtime, args);
        assert!(
            out.status.success(),
            "{args:?} as the runtime role: {}",
            text(&out)
        );
    }

    // And nothing more.
    let runtime = connect_as(&db, &roles.runtime).await;
    for sql in [
        "DROP TABLE contacts",
        "ALTER TABLE contacts ADD COLUMN evil text",
        "ALTER TABLE custom_fields DROP COLUMN context_type",
        "TRUNCATE contacts",
        "DELETE FROM contacts",
        "UPDATE contacts SET lead_status = 'x'",
        "SELECT * FROM workspace_users",
        "SELECT * FROM auth.users",
        "CREATE TABLE public.evil (id int)",
        "CREATE SCHEMA evil",
        "DROP SCHEMA leadsync CASCADE",
        "SELECT pg_replication_origin_create('evil')",
        "SELECT pg_replication_origin_session_setup('evil')",
        "SELECT pg_replication_origin_xact_setup('0/1', now())",
        "SELECT rolpassword FROM pg_authid",
        "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT 1::text'",
        "CREATE FUNCTION leadsync.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE VIEW leadsync.evil AS SELECT 1",
        "CREATE TRIGGER evil BEFORE INSERT ON customers FOR EACH ROW \
         EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "ALTER TABLE customers DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE leadsync.dead_letters ADD COLUMN evil text",
        "CREATE POLICY evil ON leadsync.sync_state USING (true)",
        "DROP INDEX idx_customers_email",
        "ALTER TABLE customers DROP CONSTRAINT customers_workspace_id_fkey",
        "INSERT INTO leadsync.deferred_constraints (table_name, constraint_name) VALUES ('x', 'y')",
        "INSERT INTO leadsync.origins VALUES ('pg_16384')",
        "SELECT * FROM leadsync.load_set_aside",
        "SELECT leadsync.load_guard_check()",
    ] {
        denied(&runtime, sql).await;
    }
    // Its functions bind leadsync's own origin only.
    let other = runtime
        .batch_execute("SELECT leadsync.bind_origin('pg_16384')")
        .await
        .expect_err("another origin bound");
    assert!(
        other.to_string().contains("is not one leadsync set up")
            || leadsync::db::error_text(&other).contains("is not one leadsync set up"),
        "{other}"
    );
    // What the first load sets aside cannot stay aside: a transaction that does not put it
    // back does not commit, so the tables keep their indexes and row-level security.
    let kept = runtime
        .batch_execute("BEGIN; SELECT leadsync.set_aside_for_load('target'); COMMIT")
        .await
        .expect_err("set aside and committed");
    assert!(
        leadsync::db::error_text(&kept).contains("not put back"),
        "{kept}"
    );
    let _ = runtime.batch_execute("ROLLBACK").await;
    let (indexes, rls): (i64, bool) = {
        let row = admin
            .query_one(
                "SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = 'customers'),
                        (SELECT relrowsecurity FROM pg_class WHERE oid = 'customers'::regclass)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(indexes >= 7 && rls, "{indexes} {rls}");
    let publication = denied(&runtime, "CREATE PUBLICATION evil FOR TABLE contacts").await;
    assert!(publication.contains("permission denied"), "{publication}");
    let origin = denied(
        &runtime,
        &format!("SELECT pg_replication_origin_drop('{}')", db.slot),
    )
    .await;
    assert!(
        origin.contains("EXECUTE on function pg_replication_origin_drop"),
        "{origin}"
    );
    let role = denied(&runtime, &format!("SET ROLE {}", roles.installer)).await;
    assert!(role.contains("permission denied"), "{role}");
    // A permission error names what is missing.
    let insert = denied(
        &runtime,
        "INSERT INTO contacts (workspace_id, created_at, updated_at)
         SELECT workspace_id, now(), now() FROM contacts LIMIT 1",
    )
    .await;
    assert!(
        insert.contains("Missing privilege on table contacts")
            && insert.contains("the runtime role needs SELECT on it"),
        "{insert}"
    );
    // Reverse sync's columns, and only those, are writable.
    runtime
        .batch_execute(
            "UPDATE contacts SET firstname = firstname, updated_at = updated_at
             WHERE id = (SELECT id FROM contacts LIMIT 1)",
        )
        .await
        .expect("reverse-sync columns are writable");
    // Its own policy lets it see every row despite the target tables' row-level security
    // (no signed-in user here, so the application's policies would show nothing).
    let seen: i64 = runtime
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(seen > 0);

    assert!(
        daemon
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "{}",
        daemon.log()
    );
    db.wait_slot_released().await;

    // teardown as the installer drops everything, the runtime role's tables included.
    let out = leadsync(
        &db,
        &roles.installer,
        &[
            "teardown",
            "--drop-target-tables",
            "--yes-drop-target-tables",
        ],
    );
    assert!(
        out.status.success(),
        "teardown as the installer: {}",
        text(&out)
    );
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'leadsync')
                  + (SELECT count(*) FROM pg_class WHERE relname = 'customers')",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    roles.drop(&admin).await;
}

#[tokio::test]
async fn installer_needs_the_legacy_tables_or_their_owner() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = Roles::for_db(&db);
    let mut settings = db.settings();
    // The legacy tables belong to a superuser: the SQL cannot make the installer their
    // owner, and says so; setup then names what is missing.
    admin
        .batch_execute(&grants_sql(&settings, &roles.installer, &roles.runtime))
        .await
        .unwrap();
    settings.source.url = Some(SecretString::from(db.url_as(&roles.installer)));
    let options = SetupOptions {
        runtime_role: Some(roles.runtime.clone()),
    };
    let problems = failed_preconditions(&settings, &options).await;
    let [Problem::Privileges { missing, .. }] = problems.as_slice() else {
        panic!("{problems:?}");
    };
    let text = missing.join("\n");
    assert!(text.contains("ownership of `public.contacts`"), "{text}");
    assert!(!text.contains("REFERENCES"), "{text}");
    assert!(!text.contains("EXECUTE"), "{text}");

    // leadsync's functions call the origin functions as the installer: setup checks it may.
    admin
        .batch_execute(&format!(
            "REVOKE EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) FROM {i}",
            i = roles.installer
        ))
        .await
        .unwrap();
    let problems = failed_preconditions(&settings, &options).await;
    let [Problem::Privileges { missing, .. }] = problems.as_slice() else {
        panic!("{problems:?}");
    };
    assert!(
        missing
            .iter()
            .any(|m| m.contains("EXECUTE on pg_replication_origin_session_setup(text)")),
        "{missing:?}"
    );
    admin
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {i}",
            i = roles.installer
        ))
        .await
        .unwrap();

    // An installer that owns them itself can install.
    give_legacy_tables(&admin, &roles.installer).await;
    let report = run_setup_with(&settings, &options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.created.is_empty() && !report.handed_over.is_empty());

    // A runtime role without its grants is told what it lacks.
    admin
        .batch_execute(&format!(
            "REVOKE SELECT ON contact_custom_fields FROM {r};
             ALTER ROLE {r} NOREPLICATION;",
            r = roles.runtime
        ))
        .await
        .unwrap();
    let problems = failed_preconditions(&settings, &options).await;
    let [Problem::RuntimeRole { missing, .. }] = problems.as_slice() else {
        panic!("{problems:?}");
    };
    let text = missing.join("\n");
    for needed in [
        "the REPLICATION attribute",
        "SELECT on `public.contact_custom_fields`",
    ] {
        assert!(text.contains(needed), "`{needed}` missing from:\n{text}");
    }
    // A runtime role that could plant code others run is refused, each way named.
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON contact_custom_fields TO {r};
             ALTER ROLE {r} REPLICATION CREATEROLE;
             GRANT CREATE ON SCHEMA public TO {r};
             CREATE ROLE {o} NOLOGIN;
             GRANT {o} TO {r};",
            r = roles.runtime,
            o = roles.owner
        ))
        .await
        .unwrap();
    let problems = failed_preconditions(&settings, &options).await;
    let [Problem::RuntimeFoothold { footholds, .. }] = problems.as_slice() else {
        panic!("{problems:?}");
    };
    let text = footholds.join("\n");
    for needed in [
        format!(
            "the CREATEROLE attribute: ALTER ROLE {} NOCREATEROLE;",
            roles.runtime
        ),
        format!(
            "CREATE on schema public: REVOKE CREATE ON SCHEMA public FROM {};",
            roles.runtime
        ),
        format!(
            "membership in role {}: REVOKE {} FROM {};",
            roles.owner, roles.owner, roles.runtime
        ),
    ] {
        assert!(text.contains(&needed), "`{needed}` missing from:\n{text}");
    }
    roles.drop(&admin).await;
}

#[tokio::test]
async fn a_missing_runtime_privilege_is_named_when_the_daemon_stops() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = roles_set_up(&db, &admin).await;
    let keys = db.legacy_foreign_keys().await;
    assert_eq!(keys.len(), 18);

    // Without SELECT on a legacy table the first load cannot read it.
    admin
        .batch_execute(&format!(
            "REVOKE SELECT ON contact_custom_fields FROM {}",
            roles.runtime
        ))
        .await
        .unwrap();
    stops_saying(
        &db,
        &roles.runtime,
        &[
            "permission denied for table contact_custom_fields",
            "the runtime role needs SELECT on it",
        ],
    )
    .await;
    // The failed load gave the target tables back the keys it had set aside.
    assert_eq!(db.legacy_foreign_keys().await, keys);

    // Without leadsync's functions it cannot checkpoint.
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON contact_custom_fields TO {r};
             REVOKE EXECUTE ON FUNCTION leadsync.bind_origin(text) FROM {r};",
            r = roles.runtime
        ))
        .await
        .unwrap();
    db.wait_slot_released().await;
    stops_saying(
        &db,
        &roles.runtime,
        &[
            "EXECUTE on function bind_origin",
            "leadsync setup --runtime-role",
        ],
    )
    .await;

    // Without the REPLICATION attribute it cannot create its slot.
    admin
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION leadsync.bind_origin(text) TO {r};
             ALTER ROLE {r} NOREPLICATION;",
            r = roles.runtime
        ))
        .await
        .unwrap();
    db.wait_slot_released().await;
    stops_saying(
        &db,
        &roles.runtime,
        &["Missing privilege: the REPLICATION attribute"],
    )
    .await;

    roles.drop(&admin).await;
}

/// Runs setup, which must stop on failed preconditions, and returns them.
async fn failed_preconditions(settings: &Settings, options: &SetupOptions) -> Vec<Problem> {
    match run_setup_with(settings, options).await {
        Err(SetupError::Preconditions(p)) => p,
        other => panic!("expected failed preconditions, got {other:?}"),
    }
}

/// Makes `role` the owner of the legacy tables setup must alter and publish.
async fn give_legacy_tables(admin: &Client, role: &str) {
    admin
        .batch_execute(&format!(
            "ALTER TABLE contacts OWNER TO {role};
             ALTER TABLE contact_custom_fields OWNER TO {role};
             ALTER TABLE custom_fields OWNER TO {role};"
        ))
        .await
        .unwrap();
}

/// Demo data, the roles with every grant, and setup (as a superuser) handing the runtime
/// role its tables.
async fn roles_set_up(db: &TestDb, admin: &tokio_postgres::Client) -> Roles {
    let roles = Roles::for_db(db);
    let settings = db.settings();
    leadsync::fixtures::generate_demo_data(admin, 50)
        .await
        .unwrap();
    admin
        .batch_execute(&grants_sql(&settings, &roles.installer, &roles.runtime))
        .await
        .unwrap();
    // setup as a superuser hands over just the same.
    run_setup_with(
        &settings,
        &SetupOptions {
            runtime_role: Some(roles.runtime.clone()),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    roles
}

#[tokio::test]
async fn without_references_on_a_legacy_table_the_first_load_checks_its_keys_row_by_row() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = Roles::for_db(&db);
    let mut settings = db.settings();
    leadsync::fixtures::generate_demo_data(&admin, 50)
        .await
        .unwrap();
    admin
        .batch_execute(&grants_sql(&settings, &roles.installer, &roles.runtime))
        .await
        .unwrap();
    give_legacy_tables(&admin, &roles.installer).await;
    settings.source.url = Some(SecretString::from(db.url_as(&roles.installer)));
    run_setup_with(
        &settings,
        &SetupOptions {
            runtime_role: Some(roles.runtime.clone()),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The installer's functions set the keys aside; without REFERENCES on auth.users the
    // installer could not add the keys into it back: they keep those 12 (checked row by
    // row), set the other 6 aside, and the schema ends whole.
    admin
        .batch_execute(&format!(
            "REVOKE REFERENCES ON auth.users FROM {i};",
            i = roles.installer
        ))
        .await
        .unwrap();
    let keys = db.legacy_foreign_keys().await;
    assert_eq!(keys.len(), 18);
    {
        let daemon = Daemon::start(BIN, &env_as(&db, &roles.runtime));
        db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
        db.assert_projection(&db.settings()).await;
        let log = daemon.log();
        assert!(
            log.contains("checks foreign keys into these tables row by row"),
            "{log}"
        );
        assert!(log.contains("tables=auth.users"), "{log}");
        assert!(log.contains("added back and validated keys=6"), "{log}");
    }
    assert_eq!(db.legacy_foreign_keys().await, keys);
    roles.drop(&admin).await;
}

/// Runs the daemon as `role` and checks that it fails by itself, saying all of `needles`.
async fn stops_saying(db: &TestDb, role: &str, needles: &[&str]) {
    let mut daemon = Daemon::start(BIN, &env_as(db, role));
    let log = daemon.wait_failed(Duration::from_secs(60)).await;
    for needle in needles {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
}

/// `leadsync.deferred_constraints` is written only by the installer's functions; the runtime
/// role cannot plant a row there. Rows an older version let it write must still never run as
/// the installer. Planted (here by the superuser, as the runtime role could once): SQL text
/// in the column older versions executed, and structured rows naming a legacy table, an
/// injection in a name, and an unknown action. `teardown` (as a superuser) leaves the legacy
/// tables as they were and adds back only keys of target tables, with every name quoted.
#[tokio::test]
async fn a_row_the_runtime_role_plants_in_the_keys_set_aside_never_runs_as_the_installer() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = roles_set_up(&db, &admin).await;
    let runtime = connect_as(&db, &roles.runtime).await;
    let planted = format!(
        "INSERT INTO leadsync.deferred_constraints
           (table_name, constraint_name, definition) VALUES
           ('public.customers', 'k1',
            'CHECK (true); ALTER TABLE public.contacts OWNER TO {r}; --');
         INSERT INTO leadsync.deferred_constraints
           (table_name, constraint_name, columns, referenced_schema, referenced_table,
            referenced_columns, on_delete, on_update) VALUES
           ('contacts', 'k2', '{{workspace_id}}', 'public', 'workspaces', '{{id}}', 'a', 'a'),
           ('customers', 'k3\"; ALTER TABLE contacts OWNER TO {r}',
            '{{workspace_id}}', 'public', 'workspaces', '{{id}}', 'a', 'a'),
           ('customers', 'k4', '{{workspace_id}}', 'public', 'workspaces', '{{id}}',
            'a; ALTER TABLE public.contacts OWNER TO {r}', 'a');",
        r = roles.runtime
    );
    denied(&runtime, &planted).await;
    admin.batch_execute(&planted).await.unwrap();
    let owner = || async {
        admin
            .query_one(
                "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.contacts'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = owner().await;
    // setup ran as a superuser here, and so does teardown: the worst case.
    let out = leadsync(&db, "postgres", &["teardown"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        owner().await,
        before,
        "teardown ran planted SQL: {}",
        text(&out)
    );
    assert_ne!(before, roles.runtime);
    // The target tables stay, without the runtime role's policy or privileges on them.
    let (policies, writable): (i64, bool) = {
        let row = admin
            .query_one(
                "SELECT (SELECT count(*) FROM pg_policy WHERE polname = 'leadsync daemon'),
                        has_table_privilege($1, 'public.customers', 'INSERT')",
                &[&roles.runtime],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((policies, writable), (0, false), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("policy \"leadsync daemon\" on"),
        "{}",
        text(&out)
    );
    // k3 was added, under its odd (quoted) name, on the target table: harmless.
    let added: Vec<String> = admin
        .query(
            "SELECT conname::text FROM pg_constraint WHERE conname LIKE 'k%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        added,
        vec![format!(
            "k3\"; ALTER TABLE contacts OWNER TO {}",
            roles.runtime
        )],
        "{}",
        text(&out)
    );
    roles.drop(&admin).await;
}

/// The review's way from the runtime role to superuser, performed: it plants an exact-type
/// overload of `lower` where a superuser's query looks for it, and a trigger on `customers`
/// for the application's inserts. Then a superuser queries `lower(email)` and the
/// application role inserts a customer, as they would any day. Neither runs the runtime
/// role's code: the runtime role stays what it was, and the marker its code would fill
/// stays empty.
#[tokio::test]
async fn the_runtime_role_cannot_plant_code_that_other_roles_run() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    let roles = roles_set_up(&db, &admin).await;
    let app = format!("app_{}", &db.slot[3..]);
    let user = uuid::Uuid::new_v4();
    let workspace: uuid::Uuid = admin
        .query_one("SELECT id FROM workspaces ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.planted_ran (by text, at timestamptz DEFAULT now());
             GRANT INSERT ON public.planted_ran TO PUBLIC;
             CREATE ROLE {app} LOGIN;
             GRANT USAGE ON SCHEMA auth TO {app};
             GRANT SELECT ON workspace_users TO {app};
             GRANT SELECT, INSERT ON customers TO {app};
             INSERT INTO auth.users (id) VALUES ('{user}');
             INSERT INTO workspace_users (workspace_id, user_id) VALUES ('{workspace}', '{user}');
             INSERT INTO customers (workspace_id, email) VALUES ('{workspace}', 'A@Example.com');"
        ))
        .await
        .unwrap();

    // The runtime role tries every way the review found, in every schema it might reach.
    let runtime = connect_as(&db, &roles.runtime).await;
    let escalate = format!(
        "LANGUAGE plpgsql AS $x$ BEGIN
           INSERT INTO public.planted_ran (by) VALUES (current_user);
           BEGIN EXECUTE 'ALTER ROLE {r} SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
           RETURN lower($1::text);
         END $x$",
        r = roles.runtime
    );
    let schemas: Vec<String> = admin
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname !~ '^pg_'
               AND nspname <> 'information_schema'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut attempts = Vec::new();
    for schema in &schemas {
        attempts.push(format!(
            "CREATE FUNCTION {schema}.lower(varchar) RETURNS text {escalate}"
        ));
    }
    attempts.push(format!(
        "CREATE FUNCTION pg_temp.planted() RETURNS trigger LANGUAGE plpgsql AS $x$ BEGIN
           INSERT INTO public.planted_ran (by) VALUES (current_user);
           BEGIN EXECUTE 'ALTER ROLE {r} SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
           RETURN NEW;
         END $x$;
         CREATE TRIGGER planted BEFORE INSERT ON customers FOR EACH ROW
           EXECUTE FUNCTION pg_temp.planted()",
        r = roles.runtime
    ));
    attempts
        .push("ALTER TABLE customers ENABLE ALWAYS TRIGGER customers_workspace_id_fkey".to_owned());
    let mut refused = 0;
    for sql in &attempts {
        if runtime.batch_execute(sql).await.is_err() {
            refused += 1;
        }
    }

    // A superuser's everyday query, with the default search_path; the application's insert,
    // as its signed-in user, while the runtime role's session is still open.
    let emails: Vec<Option<String>> = admin
        .query("SELECT lower(email) FROM customers LIMIT 5", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!emails.is_empty());
    let app_client = connect_as(&db, &app).await;
    app_client
        .batch_execute(&format!(
            "SET request.jwt.claim.sub = '{user}';
             INSERT INTO customers (workspace_id, firstname) VALUES ('{workspace}', 'Walk-in');"
        ))
        .await
        .expect("the application's insert");

    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&roles.runtime],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the runtime role became superuser");
    let ran: i64 = admin
        .query_one("SELECT count(*) FROM public.planted_ran", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ran, 0, "the runtime role's code ran as another role");
    assert_eq!(refused, attempts.len(), "an attempt went through");
    drop(runtime);
    drop(app_client);
    let _ = admin
        .batch_execute(&format!(
            "DELETE FROM workspace_users WHERE user_id = '{user}';
             DELETE FROM customers WHERE firstname = 'Walk-in' OR email = 'A@Example.com';
             DROP OWNED BY {app}; DROP ROLE {app};"
        ))
        .await;
    roles.drop(&admin).await;
}
