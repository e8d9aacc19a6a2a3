//! The SQL reconciliation (`leadsync::reconcile`) against a real PostgreSQL.
//!
//! The target is loaded with the Rust projection (`leadsync::project`) over rows read from
//! the source, so a clean reconciliation means the two independent statements of SPEC §3 —
//! Rust and SQL — agree on generated data with all three field contexts; then the target is
//! damaged in known ways and every damage must be counted exactly and named in the samples.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leadsync::config::parse_rules;
use leadsync::project::{
    Contact, ContactProjection, FieldContext, FieldValue, ProductRules, RoutedValue, ValueTable,
    appointment_id_for, contact_select, lead_id_for, project_contact, route_field_value,
};
use leadsync::reconcile::{
    DerivedId, DiffKind, ReconcileError, ReconcileOptions, Reconciliation, derived_ids_in_sql,
    reconcile,
};
use leadsync::testing::TestDb;
use tokio_postgres::Client;
use uuid::Uuid;

const WS: &str = "00000000-0000-0000-0000-00000000000a";

fn rules(text: &str, case_insensitive: bool) -> ProductRules {
    ProductRules::new(&parse_rules(text).unwrap(), case_insensitive)
}

async fn run(client: &mut Client, rules: &ProductRules) -> Reconciliation {
    reconcile(
        client,
        &ReconcileOptions {
            source_schema: "public",
            target_schema: "public",
            rules,
            except_dead_letters: false,
        },
    )
    .await
    .unwrap()
}

/// A database with `contacts` generated contacts, the target schema and demo field contexts.
/// Values longer than their target column are cut to fit first: such rows would be dead
/// letters, which the reconciliation does not except.
async fn generated_db(contacts: u64) -> (TestDb, Client) {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, contacts)
        .await
        .unwrap();
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    leadsync::fixtures::shorten_misfits(&client).await.unwrap();
    (db, client)
}

/// Reads the legacy rows, projects them with the Rust projection and inserts the result as
/// owned target rows. Returns what it inserted, per table.
async fn load_with_rust_projection(client: &Client, rules: &ProductRules) -> HashMap<String, i64> {
    let contacts: Vec<Contact> = client
        .query(
            &format!("SELECT {} FROM contacts c", contact_select("c")),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Contact::from_columns(r).unwrap())
        .collect();
    let contexts: HashMap<Uuid, FieldContext> = client
        .query("SELECT id, context_type FROM custom_fields", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), FieldContext::from_column(r.get(1))))
        .collect();
    let values: Vec<FieldValue> = client
        .query(
            "SELECT contact_id, field_id, value::text, created_at, updated_at, created_by
             FROM contact_custom_fields",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| FieldValue::from_columns(r, 0).unwrap())
        .collect();

    let projections: HashMap<Uuid, ContactProjection> = contacts
        .iter()
        .map(|c| (c.id, project_contact(c, rules)))
        .collect();
    let routed: Vec<RoutedValue> = values
        .iter()
        .filter_map(|v| {
            route_field_value(v, &contexts[&v.field_id], projections.get(&v.contact_id)).ok()
        })
        .collect();
    let customers: Vec<_> = projections.values().map(|p| &p.customer).collect();
    let leads: Vec<_> = projections
        .values()
        .filter_map(|p| p.lead.as_ref())
        .collect();
    let appointments: Vec<_> = projections
        .values()
        .filter_map(|p| p.appointment.as_ref())
        .collect();

    // One INSERT … SELECT FROM unnest(arrays) per table: thousands of rows in one round trip.
    let mut inserted = HashMap::new();
    let n = client
        .execute(
            "INSERT INTO customers (cst_id, workspace_id, firstname, lastname, email, phone1,
                                    phone2, address1, address2, city, state, zip, country,
                                    dateadded, lastchanged, created_at, updated_at, created_by,
                                    migrated_from_contact_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::text[], $12::text[], $13::text[], $14::timestamp[],
                                  $15::timestamp[], $16::timestamp[], $17::timestamp[],
                                  $18::uuid[], $19::uuid[])",
            &[
                &customers.iter().map(|c| c.cst_id).collect::<Vec<_>>(),
                &customers.iter().map(|c| c.workspace_id).collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.firstname.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.lastname.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.email.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.phone1.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.phone2.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.address1.clone())
                    .collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.address2.clone())
                    .collect::<Vec<_>>(),
                &customers.iter().map(|c| c.city.clone()).collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.state.clone())
                    .collect::<Vec<_>>(),
                &customers.iter().map(|c| c.zip.clone()).collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.country.clone())
                    .collect::<Vec<_>>(),
                &customers.iter().map(|c| c.dateadded).collect::<Vec<_>>(),
                &customers.iter().map(|c| c.lastchanged).collect::<Vec<_>>(),
                &customers.iter().map(|c| c.created_at).collect::<Vec<_>>(),
                &customers.iter().map(|c| c.updated_at).collect::<Vec<_>>(),
                &customers.iter().map(|c| c.created_by).collect::<Vec<_>>(),
                &customers
                    .iter()
                    .map(|c| c.migrated_from_contact_id)
                    .collect::<Vec<_>>(),
            ],
        )
        .await
        .unwrap();
    inserted.insert("customers".to_owned(), n as i64);
    let n = client
        .execute(
            "INSERT INTO leads (id, customer_id, workspace_id, productid, source, sourcesubdescr,
                                disposition, stg_id, priority, entrydate, lastchangedon,
                                created_at, updated_at, created_by, migrated_from_contact_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::int[], $9::int8[],
                                  $10::timestamp[], $11::timestamp[], $12::timestamp[],
                                  $13::timestamp[], $14::uuid[], $15::uuid[])",
            &[
                &leads.iter().map(|l| l.id).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.customer_id).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.workspace_id).collect::<Vec<_>>(),
                &leads
                    .iter()
                    .map(|l| l.productid.clone())
                    .collect::<Vec<_>>(),
                &leads.iter().map(|l| l.source.clone()).collect::<Vec<_>>(),
                &leads
                    .iter()
                    .map(|l| l.sourcesubdescr.clone())
                    .collect::<Vec<_>>(),
                &leads
                    .iter()
                    .map(|l| l.disposition.clone())
                    .collect::<Vec<_>>(),
                &leads.iter().map(|l| l.stg_id).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.priority).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.entrydate).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.lastchangedon).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.created_at).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.updated_at).collect::<Vec<_>>(),
                &leads.iter().map(|l| l.created_by).collect::<Vec<_>>(),
                &leads
                    .iter()
                    .map(|l| l.migrated_from_contact_id)
                    .collect::<Vec<_>>(),
            ],
        )
        .await
        .unwrap();
    inserted.insert("leads".to_owned(), n as i64);
    let n = client
        .execute(
            "INSERT INTO appointments (id, lead_id, workspace_id, apptdate, disposition, apptset,
                                       verified, confirmed, setdate, verifieddate, confirmeddate,
                                       lastchangeddate, created_at, updated_at, created_by,
                                       migrated_from_contact_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamp[],
                                  $5::text[], $6::bool[], $7::bool[], $8::bool[],
                                  $9::timestamp[], $10::timestamp[], $11::timestamp[],
                                  $12::timestamp[], $13::timestamp[], $14::timestamp[],
                                  $15::uuid[], $16::uuid[])",
            &[
                &appointments.iter().map(|a| a.id).collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.lead_id).collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.workspace_id)
                    .collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.apptdate).collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.disposition.clone())
                    .collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.apptset).collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.verified).collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.confirmed).collect::<Vec<_>>(),
                &appointments.iter().map(|a| a.setdate).collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.verifieddate)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.confirmeddate)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.lastchangeddate)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.created_at)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.updated_at)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.created_by)
                    .collect::<Vec<_>>(),
                &appointments
                    .iter()
                    .map(|a| a.migrated_from_contact_id)
                    .collect::<Vec<_>>(),
            ],
        )
        .await
        .unwrap();
    inserted.insert("appointments".to_owned(), n as i64);
    for table in ValueTable::ALL {
        let rows: Vec<&RoutedValue> = routed.iter().filter(|v| v.table == table).collect();
        let n = client
            .execute(
                &format!(
                    "INSERT INTO {} ({}, field_id, value, created_at, updated_at, created_by)
                     SELECT p, f, v::jsonb, ca, ua, cb
                     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamp[],
                                 $5::timestamp[], $6::uuid[]) AS u(p, f, v, ca, ua, cb)",
                    table.table(),
                    table.parent_column()
                ),
                &[
                    &rows.iter().map(|v| v.parent_id).collect::<Vec<_>>(),
                    &rows.iter().map(|v| v.field_id).collect::<Vec<_>>(),
                    &rows.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
                    &rows.iter().map(|v| v.created_at).collect::<Vec<_>>(),
                    &rows.iter().map(|v| v.updated_at).collect::<Vec<_>>(),
                    &rows.iter().map(|v| v.created_by).collect::<Vec<_>>(),
                ],
            )
            .await
            .unwrap();
        inserted.insert(table.table().to_owned(), n as i64);
    }
    inserted
}

/// One uuid from a query.
async fn one_id(client: &Client, sql: &str) -> Uuid {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn sql_ids_equal_the_rust_ids_and_uuid_ossp() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    let ids: Vec<Uuid> = [
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
        "0f5e3a2c-9d41-4b7e-8c1a-2e3f4a5b6c7d",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .chain((0..20).map(|_| Uuid::new_v4()))
    .collect();

    let leads = derived_ids_in_sql(&client, DerivedId::Lead, &ids)
        .await
        .unwrap();
    let appointments = derived_ids_in_sql(&client, DerivedId::Appointment, &ids)
        .await
        .unwrap();
    assert_eq!(
        leads,
        ids.iter().map(|&id| lead_id_for(id)).collect::<Vec<_>>()
    );
    assert_eq!(
        appointments,
        ids.iter()
            .map(|&id| appointment_id_for(id))
            .collect::<Vec<_>>()
    );

    // The test template has uuid-ossp: the pgcrypto form must agree with it too.
    let ossp: Vec<(Uuid, Uuid)> = client
        .query(
            "SELECT uuid_generate_v5(uuid_ns_url(), 'leadsync:lead:' || id::text),
                    uuid_generate_v5(uuid_ns_url(), 'leadsync:appointment:' || id::text)
             FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) ORDER BY n",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        ossp,
        leads.iter().copied().zip(appointments).collect::<Vec<_>>()
    );

    // Hosted databases keep extensions in a schema off the search path: pgcrypto alone,
    // moved there, still works; then uuid-ossp alone; with neither, a clear error.
    client
        .batch_execute(
            "DROP EXTENSION \"uuid-ossp\";
             CREATE SCHEMA extensions;
             ALTER EXTENSION pgcrypto SET SCHEMA extensions;",
        )
        .await
        .unwrap();
    let lead_ids = |client| derived_ids_in_sql(client, DerivedId::Lead, &ids);
    assert_eq!(lead_ids(&client).await.unwrap(), leads);
    client
        .batch_execute(
            "DROP EXTENSION pgcrypto;
             CREATE EXTENSION \"uuid-ossp\" SCHEMA extensions;",
        )
        .await
        .unwrap();
    assert_eq!(lead_ids(&client).await.unwrap(), leads);
    client
        .batch_execute("DROP EXTENSION \"uuid-ossp\"")
        .await
        .unwrap();
    let err = lead_ids(&client).await.unwrap_err();
    assert!(matches!(err, ReconcileError::NoUuidV5), "{err}");
    assert!(
        err.to_string().contains("CREATE EXTENSION pgcrypto"),
        "{err}"
    );
}

#[tokio::test]
async fn rust_projection_of_generated_data_reconciles_clean() {
    let (db, mut client) = generated_db(3000).await;
    let rules = ProductRules::guide_default();

    // Before loading, everything is missing and nothing else.
    let empty = run(&mut client, &rules).await;
    for t in &empty.tables {
        assert_eq!(
            (t.actual, t.missing, t.extra, t.different),
            (0, t.expected, 0, 0),
            "{empty}"
        );
    }

    let inserted = load_with_rust_projection(&client, &rules).await;
    let started = Instant::now();
    let r = run(&mut client, &rules).await;
    let elapsed = started.elapsed();
    eprintln!("reconcile of 3000 contacts: {elapsed:?}\n{r}");
    r.assert_clean();
    assert!(r.to_string().contains("customer_custom_fields"));

    // The order, and the counts: the SQL projection's, the Rust projection's and assess's.
    let names: Vec<&str> = r.tables.iter().map(|t| t.table).collect();
    assert_eq!(names, leadsync::schema::TARGET_TABLES);
    let assessment = leadsync::cmd::assess::assess(&client, "public")
        .await
        .unwrap();
    let p = &assessment.projected;
    let predicted = [
        p.customers,
        p.leads,
        p.appointments,
        p.customer_custom_fields,
        p.lead_custom_fields,
        p.appointment_custom_fields,
    ];
    for (t, predicted) in r.tables.iter().zip(predicted) {
        assert_eq!(t.expected, inserted[t.table], "{}", t.table);
        assert_eq!(t.actual, t.expected, "{}", t.table);
        assert_eq!(t.expected, predicted, "{}", t.table);
        assert!(t.expected > 0, "no {} in the generated data", t.table);
    }
    assert_eq!(r.table("customers").unwrap().expected, 3000);
    drop(db);
}

#[tokio::test]
async fn every_kind_of_damage_is_counted_and_sampled() {
    let (_db, mut client) = generated_db(3000).await;
    let rules = ProductRules::guide_default();
    load_with_rust_projection(&client, &rules).await;
    run(&mut client, &rules).await.assert_clean();

    // A customer with nothing hanging on it, so its delete cascades nowhere: missing 1.
    let deleted_customer = one_id(
        &client,
        "SELECT cst_id FROM customers cu
         WHERE NOT EXISTS (SELECT 1 FROM leads WHERE customer_id = cu.cst_id)
           AND NOT EXISTS (SELECT 1 FROM customer_custom_fields WHERE customer_id = cu.cst_id)
         ORDER BY cst_id LIMIT 1",
    )
    .await;
    client
        .execute(
            "DELETE FROM customers WHERE cst_id = $1",
            &[&deleted_customer],
        )
        .await
        .unwrap();

    // An owned lead for a contact without lead status: extra 1.
    let extra_lead = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO leads (id, customer_id, workspace_id, productid, disposition,
                                migrated_from_contact_id)
             SELECT $1, c.id, c.workspace_id, 'SOLAR', 'new', c.id FROM contacts c
             WHERE c.lead_status IS NULL AND c.id <> $2 ORDER BY c.id LIMIT 1",
            &[&extra_lead, &deleted_customer],
        )
        .await
        .unwrap();

    // A lead with a wrong product: different 1.
    let changed_lead = one_id(
        &client,
        "SELECT id FROM leads WHERE migrated_from_contact_id IS NOT NULL ORDER BY id LIMIT 1",
    )
    .await;
    client
        .execute(
            "UPDATE leads SET productid = 'WRONG' WHERE id = $1",
            &[&changed_lead],
        )
        .await
        .unwrap();

    // A live owned lead with neither appointment nor values, soft-deleted: missing 1.
    let soft_deleted_lead: Uuid = client
        .query_one(
            "SELECT id FROM leads l WHERE migrated_from_contact_id IS NOT NULL AND id <> $1
               AND NOT EXISTS (SELECT 1 FROM appointments WHERE lead_id = l.id)
               AND NOT EXISTS (SELECT 1 FROM lead_custom_fields WHERE lead_id = l.id)
             ORDER BY id LIMIT 1",
            &[&changed_lead],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE leads SET deleted_at = now() WHERE id = $1",
            &[&soft_deleted_lead],
        )
        .await
        .unwrap();

    // An appointment confirmed at the wrong time: different 1.
    let changed_appointment =
        one_id(&client, "SELECT id FROM appointments ORDER BY id LIMIT 1").await;
    client
        .execute(
            "UPDATE appointments SET confirmeddate = confirmeddate + interval '1 second'
             WHERE id = $1",
            &[&changed_appointment],
        )
        .await
        .unwrap();

    // A lead-level value with another JSON value: different 1.
    let (value_lead, value_field): (Uuid, Uuid) = {
        let row = client
            .query_one(
                "SELECT v.lead_id, v.field_id FROM lead_custom_fields v
                 JOIN leads l ON l.id = v.lead_id
                 WHERE l.deleted_at IS NULL ORDER BY 1, 2 LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    client
        .execute(
            "UPDATE lead_custom_fields SET value = '{\"changed\": true}'
             WHERE lead_id = $1 AND field_id = $2",
            &[&value_lead, &value_field],
        )
        .await
        .unwrap();

    // Rows the new application created itself (no migrated_from_contact_id), including a
    // value under one of them, are not the daemon's: ignored.
    client
        .batch_execute(
            "INSERT INTO customers (cst_id, workspace_id, firstname)
             SELECT '00000000-0000-0000-0000-0000000000c1', workspace_id, 'Native'
             FROM contacts ORDER BY id LIMIT 1;
             INSERT INTO leads (id, customer_id, workspace_id, productid)
             SELECT '00000000-0000-0000-0000-0000000000c2', cst_id, workspace_id, 'HVAC'
             FROM customers WHERE cst_id = '00000000-0000-0000-0000-0000000000c1';
             INSERT INTO customer_custom_fields (customer_id, field_id, value)
             SELECT '00000000-0000-0000-0000-0000000000c1', id, '1' FROM custom_fields
             ORDER BY id LIMIT 1;",
        )
        .await
        .unwrap();

    let r = run(&mut client, &rules).await;
    eprintln!("{r}");
    assert!(!r.is_clean());
    let counts = |table: &str| {
        let t = r.table(table).unwrap();
        (t.missing, t.extra, t.different)
    };
    assert_eq!(counts("customers"), (1, 0, 0));
    assert_eq!(counts("leads"), (1, 1, 1));
    assert_eq!(counts("appointments"), (0, 0, 1));
    assert_eq!(counts("customer_custom_fields"), (0, 0, 0));
    assert_eq!(counts("lead_custom_fields"), (0, 0, 1));
    assert_eq!(counts("appointment_custom_fields"), (0, 0, 0));
    let customers = r.table("customers").unwrap();
    assert_eq!(customers.actual, customers.expected - 1);

    let sample = |table: &str, kind: DiffKind, key: String| {
        let t = r.table(table).unwrap();
        t.samples
            .iter()
            .find(|s| s.kind == kind && s.key == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} sample {key} in {table}: {r}"))
    };
    let s = sample("customers", DiffKind::Missing, deleted_customer.to_string());
    assert_eq!(s.expected.unwrap()["cst_id"], deleted_customer.to_string());
    assert!(s.actual.is_none());
    let s = sample("leads", DiffKind::Extra, extra_lead.to_string());
    assert!(s.expected.is_none());
    assert_eq!(s.actual.unwrap()["productid"], "SOLAR");
    let s = sample("leads", DiffKind::Different, changed_lead.to_string());
    assert_eq!(s.actual.unwrap()["productid"], "WRONG");
    assert_ne!(s.expected.unwrap()["productid"], "WRONG");
    sample("leads", DiffKind::Missing, soft_deleted_lead.to_string());
    let s = sample(
        "appointments",
        DiffKind::Different,
        changed_appointment.to_string(),
    );
    let (e, a) = (s.expected.unwrap(), s.actual.unwrap());
    assert_ne!(e["confirmeddate"], a["confirmeddate"]);
    assert_eq!(e["apptdate"], a["apptdate"]);
    let s = sample(
        "lead_custom_fields",
        DiffKind::Different,
        format!("{value_lead}/{value_field}"),
    );
    assert_eq!(
        s.actual.unwrap()["value"],
        serde_json::json!({"changed": true})
    );

    // The report names each table that differs and the changed column.
    let report = r.to_string();
    assert!(report.contains("productid: expected"), "{report}");
    assert!(
        report.contains(&changed_appointment.to_string()),
        "{report}"
    );
    let panic = std::panic::catch_unwind(|| r.assert_clean()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    for table in ["customers", "leads", "appointments", "lead_custom_fields"] {
        assert!(message.contains(&format!("{table} (samples)")), "{message}");
    }
    assert!(!message.contains("customer_custom_fields (samples)"));

    // Reviving the soft-deleted lead brings it back; JSON equality is jsonb's (key order
    // and spacing do not matter).
    client
        .execute(
            "UPDATE leads SET deleted_at = NULL WHERE id = $1",
            &[&soft_deleted_lead],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE lead_custom_fields SET value = v.value
             FROM contact_custom_fields v JOIN leads l ON l.migrated_from_contact_id = v.contact_id
             WHERE l.id = $1 AND lead_custom_fields.lead_id = l.id
               AND lead_custom_fields.field_id = $2 AND v.field_id = $2",
            &[&value_lead, &value_field],
        )
        .await
        .unwrap();
    let r = run(&mut client, &rules).await;
    assert_eq!(r.table("leads").unwrap().missing, 0, "{r}");
    assert!(r.table("lead_custom_fields").unwrap().is_clean(), "{r}");
}

/// Inserts hand-written contacts with known tags, all with a lead.
async fn tagged_contacts(client: &Client) -> Vec<(Uuid, Option<&'static str>)> {
    let tagged: Vec<(Uuid, Option<&str>)> = vec![
        (Uuid::from_u128(1), Some("roofing,solar")),
        (Uuid::from_u128(2), Some("Solar")),
        (Uuid::from_u128(3), None),
        (Uuid::from_u128(4), Some("hvac-repair")),
        (Uuid::from_u128(5), Some("it's 50% \\ roofing_")),
    ];
    client
        .execute(
            "INSERT INTO workspaces (id, name) VALUES ($1::text::uuid, 'w')",
            &[&WS],
        )
        .await
        .unwrap();
    for (id, tags) in &tagged {
        client
            .execute(
                "INSERT INTO contacts (id, workspace_id, lead_status, tags)
                 VALUES ($1, $2::text::uuid, 'new', $3)",
                &[id, &WS, tags],
            )
            .await
            .unwrap();
    }
    tagged
}

#[tokio::test]
async fn product_rules_follow_order_and_case() {
    let db = TestDb::spawn().await;
    let mut client = db.client().await;
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    tagged_contacts(&client).await;
    let defaults = ProductRules::guide_default();
    load_with_rust_projection(&client, &defaults).await;
    let r = run(&mut client, &defaults).await;
    r.assert_clean();
    let product = |id: u128| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT productid FROM leads WHERE customer_id = $1",
                    &[&Uuid::from_u128(id)],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    // Default rules: solar comes first; case matters; NULL tags give DEFAULT.
    assert_eq!(product(1).await, "SOLAR");
    assert_eq!(product(2).await, "DEFAULT");
    assert_eq!(product(3).await, "DEFAULT");
    assert_eq!(product(4).await, "HVAC");
    assert_eq!(product(5).await, "ROOFING");

    // Rules in another order: roofing first.
    let roofing_first = rules("roofing=ROOFING,solar=SOLAR", false);
    let r = run(&mut client, &roofing_first).await;
    let leads = r.table("leads").unwrap();
    assert_eq!(
        (leads.missing, leads.extra, leads.different),
        (0, 0, 2),
        "{r}"
    );
    let mut changed: Vec<(String, serde_json::Value)> = leads
        .samples
        .iter()
        .map(|s| {
            (
                s.key.clone(),
                s.expected.as_ref().unwrap()["productid"].clone(),
            )
        })
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (
            lead_id_for(Uuid::from_u128(1)).to_string(),
            "ROOFING".into(),
        ),
        (
            lead_id_for(Uuid::from_u128(4)).to_string(),
            "DEFAULT".into(),
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(changed, want, "{r}");

    // Case-insensitive rules: "Solar" matches solar; quoting characters in a needle are
    // plain text, never SQL.
    let insensitive = rules("SOLAR=SOLAR,hvac=HVAC,% \\ roofing_=ODD", true);
    let r = run(&mut client, &insensitive).await;
    let leads = r.table("leads").unwrap();
    let mut changed: Vec<(String, serde_json::Value)> = leads
        .samples
        .iter()
        .map(|s| {
            (
                s.key.clone(),
                s.expected.as_ref().unwrap()["productid"].clone(),
            )
        })
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (
            lead_id_for(Uuid::from_u128(2)).to_string(),
            serde_json::Value::from("SOLAR"),
        ),
        (
            lead_id_for(Uuid::from_u128(5)).to_string(),
            serde_json::Value::from("ODD"),
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(changed, want, "{r}");
    assert_eq!(leads.different, 2);
}

/// Without `custom_fields.context_type` (a database `leadsync setup` has not altered) every
/// value is contact-level.
#[tokio::test]
async fn values_route_by_context_and_without_the_column_to_customers() {
    let db = TestDb::spawn().await;
    let mut client = db.client().await;
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    tagged_contacts(&client).await;
    client
        .batch_execute(&format!(
            "INSERT INTO custom_fields (id, workspace_id, name, context_type) VALUES
               ('00000000-0000-0000-0000-0000000000f1', '{WS}', 'size', 'lead');
             INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES
               ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-0000000000f1', '7');"
        ))
        .await
        .unwrap();
    let defaults = ProductRules::guide_default();
    let expected =
        |r: &Reconciliation| -> Vec<i64> { r.tables.iter().map(|t| t.expected).collect() };
    let r = run(&mut client, &defaults).await;
    assert_eq!(expected(&r), [5, 5, 0, 0, 1, 0]);
    client
        .batch_execute("ALTER TABLE custom_fields DROP COLUMN context_type")
        .await
        .unwrap();
    let r = run(&mut client, &defaults).await;
    assert_eq!(expected(&r), [5, 5, 0, 1, 0, 0]);
}

/// Rules other than the defaults, on generated data: the SQL and the Rust projection agree
/// case-insensitively, and switching rules changes exactly the leads whose product the Rust
/// projection says changes.
#[tokio::test]
async fn generated_data_with_case_insensitive_rules() {
    let (_db, mut client) = generated_db(3000).await;
    let insensitive = rules("roofing=ROOFING,solar=SOLAR,hvac=HVAC", true);
    load_with_rust_projection(&client, &insensitive).await;
    run(&mut client, &insensitive).await.assert_clean();

    let defaults = ProductRules::guide_default();
    let tags: Vec<Option<String>> = client
        .query(
            "SELECT tags FROM contacts WHERE lead_status IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let changed = tags
        .iter()
        .filter(|t| insensitive.product_for(t.as_deref()) != defaults.product_for(t.as_deref()))
        .count() as i64;
    assert!(changed > 0);
    let r = run(&mut client, &defaults).await;
    let leads = r.table("leads").unwrap();
    assert_eq!(
        (leads.missing, leads.extra, leads.different),
        (0, 0, changed)
    );
    assert!(
        r.tables
            .iter()
            .filter(|t| t.table != "leads")
            .all(|t| t.is_clean())
    );
}

/// Timing on a bigger dataset (run with `--ignored`).
#[tokio::test]
#[ignore = "slow: 100k generated contacts"]
async fn reconcile_100k_contacts() {
    let (_db, mut client) = generated_db(100_000).await;
    let rules = ProductRules::guide_default();
    load_with_rust_projection(&client, &rules).await;
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        run(&mut client, &rules).await.assert_clean();
        best = best.min(started.elapsed());
    }
    eprintln!("reconcile of 100k contacts: best of 3 {best:?}");
}
