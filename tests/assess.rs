//! `leadsync assess` and the demo-data generator against a real PostgreSQL.

use leadsync::cmd::assess::assess;
use leadsync::fixtures::generate_demo_data;
use leadsync::testing::TestDb;

const WS: &str = "00000000-0000-0000-0000-00000000000a";

/// Hand-written contacts with known problems: every figure is known in advance.
#[tokio::test]
async fn assess_counts_known_problems_exactly() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO workspaces (id, name) VALUES ('{WS}', 'w');
             INSERT INTO custom_fields (id, workspace_id, name, field_type) VALUES
               ('00000000-0000-0000-0000-0000000000f1', '{WS}', 'budget', 'number'),
               ('00000000-0000-0000-0000-0000000000f2', '{WS}', 'notes', 'text');
             INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number,
                                   lead_status, lead_source, appointment_date) VALUES
               ('00000000-0000-0000-0000-000000000001', '{WS}', 'A', 'B', 'a@b.co', '(555) 123-4567 ext. 1234', 'new', 'web', NULL),
               ('00000000-0000-0000-0000-000000000002', '{WS}', NULL, NULL, '', '555-1234', '', '', '2024-01-01'),
               ('00000000-0000-0000-0000-000000000003', '{WS}', 'C', '', 'not-an-email', '5551234567', NULL, NULL, '2024-01-02'),
               ('00000000-0000-0000-0000-000000000004', '{WS}', 'D', 'E', 'd@e.co', '(555) 765-4321 ext. 99', 'won', NULL, '2024-01-03');
             INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES
               ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-0000000000f1', '100'),
               ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-0000000000f1', '200'),
               ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-0000000000f2', '\"x\"');"
        ))
        .await
        .unwrap();
    let a = assess(&client, "public").await.unwrap();

    assert_eq!(a.summary.contacts, 4);
    assert_eq!(a.summary.workspaces_with_contacts, 1);
    assert_eq!(a.summary.field_definitions, 2);
    assert_eq!(a.summary.field_values, 3);
    assert_eq!(a.summary.contacts_with_lead_status, 3);
    assert_eq!(a.summary.contacts_with_appointment_date, 3);
    assert_eq!(a.projected.customers, 4);
    assert_eq!(a.projected.leads, 3);
    assert_eq!(a.projected.appointments, 2);
    // No context_type column before setup: every value is contact-level.
    assert_eq!(a.projected.customer_custom_fields, 3);
    assert_eq!(a.projected.unroutable_values, 0);

    assert_eq!(a.misfits.len(), 1, "{:?}", a.misfits);
    let phone = &a.misfits[0];
    assert_eq!(phone.target_column, "customers.phone1");
    assert_eq!(phone.source_column, "contacts.phone_number");
    assert_eq!(phone.limit, 20);
    assert_eq!(phone.rows, 2);
    assert_eq!(phone.max_length, 24);
    assert_eq!(
        phone
            .sample_contact_ids
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>(),
        [
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000004"
        ]
    );

    let warning = |check: &str| a.warnings.iter().find(|w| w.check == check).unwrap().rows;
    assert_eq!(warning("empty_lead_status"), 1);
    assert_eq!(warning("empty_lead_source"), 1);
    assert_eq!(warning("empty_email"), 1);
    assert_eq!(warning("invalid_email"), 1);
    assert_eq!(warning("short_phone"), 1);
    assert_eq!(warning("no_name_or_email"), 1);
    assert_eq!(warning("appointment_without_lead"), 1);

    let w = &a.workspaces[0];
    assert_eq!(w.contacts, 4);
    assert_eq!(w.email_pct, 75.0);
    assert_eq!(w.phone_pct, 100.0);
    assert_eq!(w.lead_status_pct, 75.0);
    assert_eq!(w.name_pct, 62.5);

    // One definition per type; the guide's query would have counted values as definitions.
    let usage: Vec<(String, i64, i64)> = a
        .custom_fields
        .iter()
        .map(|f| (f.field_type.clone(), f.definitions, f.values))
        .collect();
    assert_eq!(usage, [("number".into(), 1, 2), ("text".into(), 1, 1)]);

    let text = a.render();
    assert!(text.contains("customers.phone1"), "{text}");
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["misfits"][0]["rows"], 2);
}

#[tokio::test]
async fn assess_routes_values_by_context_after_setup() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    generate_demo_data(&client, 3000).await.unwrap();
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let a = assess(&client, "public").await.unwrap();

    let expected = |sql: &str| {
        let client = &client;
        let sql = sql.to_owned();
        async move { client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let by_ctx = "SELECT count(*) FROM contact_custom_fields v JOIN custom_fields f ON f.id = v.field_id JOIN contacts c ON c.id = v.contact_id WHERE ";
    assert_eq!(
        a.projected.customer_custom_fields,
        expected(&format!("{by_ctx} f.context_type = 'contact'")).await
    );
    assert_eq!(
        a.projected.lead_custom_fields,
        expected(&format!(
            "{by_ctx} f.context_type = 'lead' AND c.lead_status IS NOT NULL"
        ))
        .await
    );
    assert_eq!(
        a.projected.appointment_custom_fields,
        expected(&format!("{by_ctx} f.context_type = 'appointment' AND c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL")).await
    );
    assert!(a.projected.lead_custom_fields > 0 && a.projected.appointment_custom_fields > 0);
    assert!(a.projected.unroutable_values > 0);
    assert_eq!(
        a.projected.customer_custom_fields
            + a.projected.lead_custom_fields
            + a.projected.appointment_custom_fields
            + a.projected.unroutable_values,
        a.summary.field_values
    );
}

/// The generator is deterministic and has the shape the demo and benchmarks rely on.
#[tokio::test]
async fn demo_data_is_deterministic_and_dirty() {
    let one = TestDb::spawn().await;
    let two = TestDb::spawn().await;
    let fingerprint = "SELECT md5(string_agg(c::text, '|' ORDER BY c.id)) FROM contacts c";
    let values = "SELECT md5(string_agg(v::text, '|' ORDER BY v.contact_id, v.field_id)) FROM contact_custom_fields v";
    let mut prints = Vec::new();
    for db in [&one, &two] {
        let client = db.client().await;
        generate_demo_data(&client, 5000).await.unwrap();
        let a: String = client.query_one(fingerprint, &[]).await.unwrap().get(0);
        let b: String = client.query_one(values, &[]).await.unwrap().get(0);
        prints.push((a, b));
    }
    assert_eq!(prints[0], prints[1]);

    let client = one.client().await;
    let a = assess(&client, "public").await.unwrap();
    let s = &a.summary;
    assert_eq!(s.contacts, 5000);
    let pct = |n: i64| n as f64 / s.contacts as f64;
    assert!(
        (0.66..0.74).contains(&pct(s.contacts_with_lead_status)),
        "{s:?}"
    );
    assert!(
        (0.26..0.34).contains(&pct(s.contacts_with_appointment_date)),
        "{s:?}"
    );
    assert!((1.55..1.85).contains(&pct(s.field_values)), "{s:?}");
    assert!(s.workspaces_with_contacts >= 5, "{s:?}");
    let misfit_columns: Vec<&str> = a.misfits.iter().map(|m| m.target_column.as_str()).collect();
    assert!(
        misfit_columns.contains(&"customers.phone1"),
        "{misfit_columns:?}"
    );
    for check in [
        "empty_lead_status",
        "empty_lead_source",
        "empty_email",
        "invalid_email",
        "short_phone",
    ] {
        let rows = a.warnings.iter().find(|w| w.check == check).unwrap().rows;
        assert!(rows > 0, "no {check} rows in the demo data");
    }
    let tags: Vec<String> = client
        .query(
            "SELECT DISTINCT tags FROM contacts WHERE tags IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for wanted in ["solar", "Solar", "solar,hvac", "vip", ""] {
        assert!(tags.iter().any(|t| t == wanted), "no tags {wanted:?}");
    }
    let null_names: i64 = client
        .query_one("SELECT count(*) FROM contacts WHERE firstname IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(null_names > 0);
}
