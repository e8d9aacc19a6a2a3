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

    // Integer columns as the fixture has them: nothing beyond int4, nothing infinite.
    assert!(a.edge_values.is_empty(), "{:?}", a.edge_values);
    assert!(
        text.contains("Values leadsync cannot carry as they are: none"),
        "{text}"
    );
    assert_eq!(json["edge_values"], serde_json::json!([]));
}

fn contact(n: u8) -> String {
    format!("00000000-0000-0000-0000-0000000000{n:02}")
}

/// Infinite timestamps, appointment dates at PostgreSQL's lower edge and priorities beyond
/// int4, with the legacy timestamps of type `timestamp_type` and priority of `priority_type`.
/// The session's time zone is not UTC: the bound is UTC on a `timestamptz` column whatever
/// the session says.
async fn assess_edge_values(timestamp_type: &str, priority_type: &str) {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    let f1 = "00000000-0000-0000-0000-0000000000f1";
    // Not counted: 4 (an appointment date exactly at the bound), 5 (below it, but no lead and
    // so no appointment), 6 (a priority beyond int4, but no lead to carry it), 8 and 9
    // (priorities at the int4 limits), 9's -infinity as a date too early (it is counted as
    // infinite).
    client
        .batch_execute(&format!(
            "SET TimeZone = 'America/New_York';
             ALTER TABLE contacts ALTER appointment_date TYPE {timestamp_type},
                                  ALTER created_at TYPE {timestamp_type},
                                  ALTER updated_at TYPE {timestamp_type},
                                  ALTER priority TYPE {priority_type};
             ALTER TABLE contact_custom_fields ALTER created_at TYPE {timestamp_type},
                                               ALTER updated_at TYPE {timestamp_type};
             INSERT INTO workspaces (id, name) VALUES ('{WS}', 'w');
             INSERT INTO custom_fields (id, workspace_id, name) VALUES ('{f1}', '{WS}', 'f');
             INSERT INTO contacts (id, workspace_id, lead_status, appointment_date, priority,
                                   created_at, updated_at) VALUES
               ('{c1}', '{WS}', 'new', 'infinity', NULL, '2024-01-01+00', '2024-01-01+00'),
               ('{c2}', '{WS}', NULL, NULL, 1, '-infinity', '2024-01-01+00'),
               ('{c3}', '{WS}', 'new', '4714-11-24 23:59:59.999999+00 BC', NULL,
                '2024-01-01+00', '2024-01-01+00'),
               ('{c4}', '{WS}', 'new', '4714-11-25 00:00:00+00 BC', NULL,
                '2024-01-01+00', '2024-01-01+00'),
               ('{c5}', '{WS}', NULL, '4714-11-24 12:00:00+00 BC', NULL,
                '2024-01-01+00', '2024-01-01+00'),
               ('{c6}', '{WS}', NULL, NULL, 2147483648, '2024-01-01+00', '2024-01-01+00'),
               ('{c7}', '{WS}', 'new', NULL, -2147483649, '2024-01-01+00', '2024-01-01+00'),
               ('{c8}', '{WS}', 'new', NULL, 2147483647, '2024-01-01+00', '2024-01-01+00'),
               ('{c9}', '{WS}', 'new', '-infinity', -2147483648, '2024-01-01+00', 'infinity');
             INSERT INTO contact_custom_fields (contact_id, field_id, value, created_at,
                                                updated_at) VALUES
               ('{c2}', '{f1}', '1', '2024-01-01+00', 'infinity'),
               ('{c4}', '{f1}', '2', '-infinity', '2024-01-01+00'),
               ('{c8}', '{f1}', '3', '2024-01-01+00', '2024-01-01+00');",
            c1 = contact(1),
            c2 = contact(2),
            c3 = contact(3),
            c4 = contact(4),
            c5 = contact(5),
            c6 = contact(6),
            c7 = contact(7),
            c8 = contact(8),
            c9 = contact(9),
        ))
        .await
        .unwrap();
    let a = assess(&client, "public").await.unwrap();

    let expected: Vec<(&str, &str, i64, Vec<String>)> = vec![
        (
            "infinite_timestamp",
            "contacts.appointment_date",
            2,
            vec![contact(1), contact(9)],
        ),
        (
            "infinite_timestamp",
            "contacts.created_at",
            1,
            vec![contact(2)],
        ),
        (
            "infinite_timestamp",
            "contacts.updated_at",
            1,
            vec![contact(9)],
        ),
        (
            "appointment_before_min_setdate",
            "contacts.appointment_date",
            1,
            vec![contact(3)],
        ),
        ("beyond_int4", "contacts.priority", 1, vec![contact(7)]),
        (
            "infinite_timestamp",
            "contact_custom_fields.created_at",
            1,
            vec![contact(4)],
        ),
        (
            "infinite_timestamp",
            "contact_custom_fields.updated_at",
            1,
            vec![contact(2)],
        ),
    ];
    let found: Vec<(&str, &str, i64, Vec<String>)> = a
        .edge_values
        .iter()
        .map(|e| {
            (
                e.check,
                e.source_column.as_str(),
                e.rows,
                e.sample_contact_ids.iter().map(|u| u.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(found, expected);

    let json = serde_json::to_value(&a).unwrap();
    let from_json: Vec<(String, String, i64, Vec<String>)> = json["edge_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["check"].as_str().unwrap().to_owned(),
                e["source_column"].as_str().unwrap().to_owned(),
                e["rows"].as_i64().unwrap(),
                e["sample_contact_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    let expected_owned: Vec<(String, String, i64, Vec<String>)> = expected
        .iter()
        .map(|(c, col, n, ids)| (c.to_string(), col.to_string(), *n, ids.clone()))
        .collect();
    assert_eq!(from_json, expected_owned);
    assert_eq!(
        json["edge_values"][3]["outcome"],
        "dead letter: its setdate (a day earlier) is below PostgreSQL's lowest timestamp"
    );

    let text = a.render();
    assert_eq!(edge_table(&text), expected_owned, "{text}");
    // The outcome column wraps: its words, in order.
    let words = text
        .split("Values leadsync cannot carry as they are\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim_matches('│').split('┆').nth(3))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(words.contains("carried as infinity"), "{text}");
    assert!(
        words.contains("dead letter: leads.priority is an INTEGER"),
        "{text}"
    );
}

/// The rows of the human report's table of values leadsync cannot carry: check, column,
/// count and the sample contacts (the first beside them, the rest on lines below). The table
/// wraps its cells to the terminal's width: a row goes on until the next line with a count.
fn edge_table(text: &str) -> Vec<(String, String, i64, Vec<String>)> {
    let section = text
        .split("Values leadsync cannot carry as they are\n")
        .nth(1)
        .expect("no table of values leadsync cannot carry");
    let mut rows: Vec<(String, String, i64, Vec<String>)> = Vec::new();
    // Header, rule, then body lines up to the bottom border.
    for line in section.lines().skip(3).take_while(|l| l.starts_with('│')) {
        let cells: Vec<&str> = line.trim_matches('│').split('┆').map(str::trim).collect();
        let [check, column, count, _, sample] = cells[..] else {
            panic!("unexpected row {line:?}");
        };
        if !count.is_empty() {
            rows.push((
                check.to_owned(),
                column.to_owned(),
                count.parse().unwrap(),
                vec![sample.to_owned()],
            ));
            continue;
        }
        let row = rows.last_mut().expect("a row before its continuation");
        // Names and contact ids hold no spaces: a wrapped one is joined back as it was.
        row.0.push_str(check);
        row.1.push_str(column);
        match row.3.last_mut() {
            Some(last) if last.len() < 36 => last.push_str(sample),
            _ if !sample.is_empty() => row.3.push(sample.to_owned()),
            _ => {}
        }
    }
    rows
}

#[tokio::test]
async fn assess_counts_values_leadsync_cannot_carry_in_timestamp_columns() {
    assess_edge_values("timestamp", "bigint").await;
}

#[tokio::test]
async fn assess_counts_values_leadsync_cannot_carry_in_timestamptz_columns() {
    assess_edge_values("timestamptz", "numeric").await;
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
