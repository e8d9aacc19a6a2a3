//! `leadsync setup` against a real PostgreSQL: what it creates, that a second run changes
//! nothing, and the message of every precondition that can fail.

use leadsync::cluster::{ClusterOptions, TempCluster};
use leadsync::cmd::setup::{Problem, SetupError, run_setup};
use leadsync::testing::{TestDb, schema_dump};
use leadsync::triggers::{SyncTrigger, sync_triggers};
use secrecy::SecretString;

fn problems(result: Result<impl std::fmt::Debug, SetupError>) -> Vec<Problem> {
    match result {
        Err(SetupError::Preconditions(p)) => p,
        other => panic!("expected failed preconditions, got {other:?}"),
    }
}

async fn catalog_extras(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    client
        .query(
            "SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname = $1
             UNION ALL
             SELECT 'published ' || schemaname || '.' || tablename FROM pg_publication_tables
              WHERE pubname = $2
             UNION ALL
             SELECT 'state ' || slot_name || ' ' || phase FROM leadsync.sync_state
             ORDER BY 1",
            &[&db.slot, &db.settings().publication.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn setup_twice_leaves_the_catalog_identical() {
    let db = TestDb::spawn().await;
    let settings = db.settings();
    let legacy_only = schema_dump(db.port(), &db.name);

    let first = run_setup(&settings).await.unwrap();
    assert!(!first.created.is_empty());
    let dump = schema_dump(db.port(), &db.name);
    let extras = catalog_extras(&db).await;
    assert!(dump != legacy_only, "setup changed nothing");

    let second = run_setup(&settings).await.unwrap();
    assert_eq!(second.created, Vec::<String>::new());
    assert!(!second.publication_altered);
    let again = schema_dump(db.port(), &db.name);
    let changed: Vec<_> = again
        .lines()
        .zip(dump.lines())
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        again == dump,
        "second setup changed the schema: {changed:?}"
    );
    assert_eq!(catalog_extras(&db).await, extras);
}

/// An idempotent setup's "already exists, skipping" notices stay out of the output, even at
/// the info level.
#[tokio::test]
async fn a_second_setup_forwards_no_server_notices() {
    let db = TestDb::spawn().await;
    let bin = env!("CARGO_BIN_EXE_leadsync");
    let env = leadsync::testing::daemon_env(&db);
    for run in ["first", "second"] {
        let (code, out, err) = leadsync::testing::run_cli(bin, env.clone(), &["setup"]).await;
        assert_eq!(code, 0, "{run} setup: {out}{err}");
        assert!(!err.contains("NOTICE"), "{run} setup: {err}");
        assert!(!err.contains("already exists"), "{run} setup: {err}");
    }
}

#[tokio::test]
async fn setup_creates_the_fixed_target_schema() {
    let db = TestDb::spawn().await;
    let settings = db.settings();
    run_setup(&settings).await.unwrap();
    let client = db.client().await;

    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // Four policies (select/insert/update/delete) on each of the six tables.
    let policies: Vec<(String, String)> = client
        .query(
            "SELECT tablename::text, cmd FROM pg_policies WHERE schemaname = 'public'
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = Vec::new();
    for table in [
        "appointment_custom_fields",
        "appointments",
        "customer_custom_fields",
        "customers",
        "lead_custom_fields",
        "leads",
    ] {
        for cmd in ["DELETE", "INSERT", "SELECT", "UPDATE"] {
            expected.push((table.to_owned(), cmd.to_owned()));
        }
    }
    assert_eq!(policies, expected);
    assert_eq!(
        count("SELECT count(*) FROM pg_class WHERE relname IN ('customers','leads','appointments','customer_custom_fields','lead_custom_fields','appointment_custom_fields') AND relrowsecurity").await,
        6
    );
    // deleted_at on the three owned tables.
    assert_eq!(
        count("SELECT count(*) FROM information_schema.columns WHERE column_name = 'deleted_at' AND table_name IN ('customers','leads','appointments') AND is_nullable = 'YES'").await,
        3
    );
    // Partial unique indexes on migrated_from_contact_id of leads and appointments.
    let unique: Vec<String> = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE indexname IN
             ('idx_leads_migrated_from', 'idx_appointments_migrated_from') ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unique.len(), 2);
    for def in &unique {
        assert!(def.starts_with("CREATE UNIQUE INDEX"), "{def}");
        assert!(
            def.contains("WHERE (migrated_from_contact_id IS NOT NULL)"),
            "{def}"
        );
    }
    // No unique (customer_id, productid): several leads of one product are allowed.
    assert_eq!(
        count("SELECT count(*) FROM pg_constraint WHERE conrelid = 'leads'::regclass AND contype = 'u'").await,
        0
    );
    // custom_fields.context_type with its check.
    client
        .batch_execute("INSERT INTO workspaces (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'w')")
        .await
        .unwrap();
    let bad = client
        .batch_execute("INSERT INTO custom_fields (workspace_id, name, context_type) VALUES ('00000000-0000-0000-0000-000000000001', 'f', 'deal')")
        .await;
    assert!(bad.is_err(), "context_type accepted an unknown context");
    let default: String = client
        .query_one("INSERT INTO custom_fields (workspace_id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'g') RETURNING context_type", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(default, "contact");
    // Publication: the legacy tables plus customers (reverse sync is on by default).
    let published: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&settings.publication.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        published,
        [
            "contact_custom_fields",
            "contacts",
            "custom_fields",
            "customers"
        ]
    );
    let origin: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(origin, 1);
    // No slot yet: the first run makes it with its snapshot.
    assert_eq!(
        count("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")
            .await,
        0
    );
}

#[tokio::test]
async fn turning_reverse_sync_off_takes_customers_out_of_the_publication() {
    let db = TestDb::spawn().await;
    let mut settings = db.settings();
    run_setup(&settings).await.unwrap();
    settings.sync.reverse = false;
    let report = run_setup(&settings).await.unwrap();
    assert!(report.publication_altered);
    let client = db.client().await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'customers'",
            &[&settings.publication.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn missing_legacy_tables_are_named() {
    let shared = TestDb::spawn().await;
    let empty = TestDb::spawn_on(shared.port(), false).await;
    let mut settings = empty.settings();
    settings.slot.name = empty.slot.clone();
    let found = problems(run_setup(&settings).await);
    for table in [
        "contacts",
        "contact_custom_fields",
        "custom_fields",
        "workspaces",
    ] {
        assert!(
            found.contains(&Problem::MissingTable {
                table: format!("public.{table}")
            }),
            "{table} not reported in {found:?}"
        );
    }
    assert!(found.contains(&Problem::MissingAuth {
        object: "auth.users".into()
    }));
    let text = SetupError::Preconditions(found).to_string();
    assert!(
        text.contains("legacy table `public.contacts` does not exist"),
        "{text}"
    );
    assert!(text.contains("source.schema"), "{text}");
}

#[tokio::test]
async fn missing_projected_column_is_named() {
    let db = TestDb::spawn().await;
    db.client()
        .await
        .batch_execute("ALTER TABLE contacts DROP COLUMN tags")
        .await
        .unwrap();
    let found = problems(run_setup(&db.settings()).await);
    assert_eq!(
        found,
        vec![Problem::MissingColumn {
            table: "public.contacts".into(),
            column: "tags".into()
        }]
    );
}

#[tokio::test]
async fn role_without_privileges_is_told_what_it_lacks() {
    let db = TestDb::spawn().await;
    let role = format!("weak_{}", &db.slot[3..]);
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             REVOKE CREATE ON DATABASE {} FROM PUBLIC",
            db.name
        ))
        .await
        .unwrap();
    let mut settings = db.settings();
    settings.source.url = Some(SecretString::from(db.url_as(&role)));
    let found = problems(run_setup(&settings).await);
    let _ = client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    let [Problem::Privileges { role: who, missing }] = found.as_slice() else {
        panic!("expected one privileges problem, got {found:?}");
    };
    assert_eq!(who, &role);
    let text = missing.join("\n");
    for needed in [
        "CREATE on schema `public`",
        "CREATE on the database (to create schema `leadsync`)",
        "CREATE on the database (to create the publication)",
        "ownership of `public.contacts`",
        "ownership of `public.custom_fields`",
        "REFERENCES on `public.workspaces`",
        "EXECUTE on pg_replication_origin_create(text)",
    ] {
        assert!(text.contains(needed), "`{needed}` missing from:\n{text}");
    }
}

#[tokio::test]
async fn unreachable_server_says_where_it_tried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut settings = leadsync::config::Settings::default();
    settings.source.url = Some(SecretString::from(format!(
        "postgres://app:topsecret@127.0.0.1:{port}/crm"
    )));
    let err = run_setup(&settings).await.unwrap_err();
    assert!(matches!(err, SetupError::Connect(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("app@127.0.0.1:{port}/crm")),
        "{text}"
    );
    assert!(!text.contains("topsecret"), "{text}");
}

/// A cluster of its own: `wal_level = replica` and every replication slot taken.
#[tokio::test]
async fn wal_level_and_exhausted_slots_are_reported() {
    let cluster = tokio::task::spawn_blocking(|| {
        TempCluster::start(&ClusterOptions {
            wal_level: "replica".into(),
            max_replication_slots: 1,
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let db = TestDb::spawn_on(cluster.port(), true).await;
    db.client()
        .await
        .batch_execute("SELECT pg_create_physical_replication_slot('filler')")
        .await
        .unwrap();
    let found = problems(run_setup(&db.settings()).await);
    assert_eq!(
        found,
        vec![
            Problem::WalLevel {
                current: "replica".into()
            },
            Problem::NoFreeSlot { used: 1, max: 1 },
        ]
    );
    let text = SetupError::Preconditions(found).to_string();
    assert!(
        text.contains("ALTER SYSTEM SET wal_level = logical"),
        "{text}"
    );
    assert!(text.contains("pg_drop_replication_slot"), "{text}");
    drop(db);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// The guide's sync triggers, Steps 1 and 3, shortened to the statements that matter: one on
/// `contacts` that writes `customers`, one on `customers` that writes `contacts` (schema-
/// qualified, in other case), and a trigger that writes neither.
const GUIDE_SYNC_TRIGGERS: &str = r#"
CREATE FUNCTION sync_contact_to_customer() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO customers (cst_id, workspace_id, firstname, migrated_from_contact_id)
        VALUES (NEW.id, NEW.workspace_id, NEW.firstname, NEW.id)
        ON CONFLICT (cst_id) DO UPDATE SET firstname = EXCLUDED.firstname, updated_at = NOW();
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        UPDATE customers SET firstname = NEW.firstname, updated_at = NOW()
        WHERE cst_id = NEW.id;
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

CREATE TRIGGER sync_contact_to_customer_trigger
    AFTER INSERT OR UPDATE OR DELETE ON contacts
    FOR EACH ROW EXECUTE FUNCTION sync_contact_to_customer();

CREATE FUNCTION sync_customer_to_contact() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        Update Public.Contacts SET firstname = NEW.firstname, updated_at = NOW()
        WHERE id = NEW.cst_id AND NEW.migrated_from_contact_id IS NOT NULL;
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

CREATE TRIGGER sync_customer_to_contact_trigger
    AFTER UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION sync_customer_to_contact();

CREATE FUNCTION sync_custom_fields() RETURNS TRIGGER AS $$
BEGIN
    INSERT INTO customer_custom_fields (customer_id, field_id, value, created_at, updated_at)
    VALUES (NEW.contact_id, NEW.field_id, NEW.value, NEW.created_at, NEW.updated_at)
    ON CONFLICT (customer_id, field_id) DO UPDATE SET value = EXCLUDED.value;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

CREATE TRIGGER sync_custom_fields_trigger
    AFTER INSERT OR UPDATE ON contact_custom_fields
    FOR EACH ROW EXECUTE FUNCTION sync_custom_fields();

CREATE FUNCTION touch_updated_at() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER touch_customers BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER touch_contacts BEFORE UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
"#;

#[tokio::test]
async fn leftover_sync_triggers_stop_setup_until_dropped() {
    let db = TestDb::spawn().await;
    let settings = db.settings();
    // The target tables exist once setup has run; the guide installs its triggers after that.
    run_setup(&settings).await.unwrap();
    let client = db.client().await;
    client.batch_execute(GUIDE_SYNC_TRIGGERS).await.unwrap();

    let expected = vec![
        SyncTrigger {
            schema: "public".into(),
            table: "contact_custom_fields".into(),
            trigger: "sync_custom_fields_trigger".into(),
            function: "public.sync_custom_fields".into(),
            drop_sql: "DROP TRIGGER sync_custom_fields_trigger ON public.contact_custom_fields;"
                .into(),
        },
        SyncTrigger {
            schema: "public".into(),
            table: "contacts".into(),
            trigger: "sync_contact_to_customer_trigger".into(),
            function: "public.sync_contact_to_customer".into(),
            drop_sql: "DROP TRIGGER sync_contact_to_customer_trigger ON public.contacts;".into(),
        },
        SyncTrigger {
            schema: "public".into(),
            table: "customers".into(),
            trigger: "sync_customer_to_contact_trigger".into(),
            function: "public.sync_customer_to_contact".into(),
            drop_sql: "DROP TRIGGER sync_customer_to_contact_trigger ON public.customers;".into(),
        },
    ];
    // The touch_* triggers write neither table and are not named.
    assert_eq!(sync_triggers(&client, &settings).await.unwrap(), expected);
    let found = problems(run_setup(&settings).await);
    assert_eq!(
        found,
        vec![Problem::SyncTriggers {
            triggers: expected.clone()
        }]
    );
    let text = SetupError::Preconditions(found).to_string();
    for needed in [
        "triggers that write `customers` or `contacts` are installed",
        "`sync_contact_to_customer_trigger` on `public.contacts` (function \
         `public.sync_contact_to_customer`)",
        "`sync_customer_to_contact_trigger` on `public.customers` (function \
         `public.sync_customer_to_contact`)",
        "loop",
        "\n      DROP TRIGGER sync_contact_to_customer_trigger ON public.contacts;",
        "\n      DROP TRIGGER sync_customer_to_contact_trigger ON public.customers;",
    ] {
        assert!(text.contains(needed), "`{needed}` missing from:\n{text}");
    }
    assert!(!text.contains("touch"), "{text}");

    // A disabled trigger still counts: enabling it again would start the loop.
    client
        .batch_execute("ALTER TABLE contacts DISABLE TRIGGER sync_contact_to_customer_trigger")
        .await
        .unwrap();
    assert_eq!(sync_triggers(&client, &settings).await.unwrap(), expected);

    for trigger in &expected {
        client.batch_execute(&trigger.drop_sql).await.unwrap();
    }
    let report = run_setup(&settings).await.unwrap();
    assert_eq!(report.created, Vec::<String>::new());
    let touch: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'touch_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(touch, 2);
}
