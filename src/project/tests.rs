//! The projection, rule by rule: each test states the whole expected row.

use super::*;
use crate::Timestamp;
use crate::config::parse_rules;
use chrono::NaiveDate;

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn contact() -> Contact {
    Contact {
        id: id(0xC1),
        workspace_id: id(0xA1),
        firstname: Some("Ana".into()),
        lastname: Some("Lopez".into()),
        email: Some("ana@example.com".into()),
        phone_number: Some("(512) 555-0100".into()),
        st_address: Some("1 Oak St".into()),
        city: Some("Austin".into()),
        state: Some("TX".into()),
        zip: Some("78701".into()),
        lead_status: None,
        lead_source: None,
        tags: None,
        appointment_status_id: None,
        appointment_result_id: None,
        appointment_date: None,
        priority: None,
        created_at: ts("2023-01-02 03:04:05.123456"),
        updated_at: ts("2023-06-07 08:09:10.5"),
        created_by: Some(id(0xB1)),
    }
}

fn rules() -> ProductRules {
    ProductRules::guide_default()
}

fn expected_customer(c: &Contact) -> Customer {
    Customer {
        cst_id: c.id,
        workspace_id: c.workspace_id,
        firstname: c.firstname.clone(),
        lastname: c.lastname.clone(),
        email: c.email.clone(),
        phone1: c.phone_number.clone(),
        phone2: None,
        address1: c.st_address.clone(),
        address2: None,
        city: c.city.clone(),
        state: c.state.clone(),
        zip: c.zip.clone(),
        country: "US".into(),
        dateadded: c.created_at,
        lastchanged: c.updated_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        created_by: c.created_by,
        migrated_from_contact_id: c.id,
    }
}

#[test]
fn contact_without_lead_status_is_only_a_customer() {
    let c = contact();
    let p = project_contact(&c, &rules());
    assert_eq!(
        p,
        ContactProjection {
            customer: Customer {
                cst_id: id(0xC1),
                workspace_id: id(0xA1),
                firstname: Some("Ana".into()),
                lastname: Some("Lopez".into()),
                email: Some("ana@example.com".into()),
                phone1: Some("(512) 555-0100".into()),
                phone2: None,
                address1: Some("1 Oak St".into()),
                address2: None,
                city: Some("Austin".into()),
                state: Some("TX".into()),
                zip: Some("78701".into()),
                country: "US".into(),
                dateadded: ts("2023-01-02 03:04:05.123456"),
                lastchanged: ts("2023-06-07 08:09:10.5"),
                created_at: ts("2023-01-02 03:04:05.123456"),
                updated_at: ts("2023-06-07 08:09:10.5"),
                created_by: Some(id(0xB1)),
                migrated_from_contact_id: id(0xC1),
            },
            lead: None,
            appointment: None,
        }
    );
}

#[test]
fn appointment_date_without_lead_status_makes_no_appointment() {
    let c = Contact {
        appointment_date: Some(ts("2024-03-01 10:00:00")),
        appointment_status_id: Some(6),
        ..contact()
    };
    let p = project_contact(&c, &rules());
    assert_eq!(p.lead, None);
    assert_eq!(p.appointment, None);
}

#[test]
fn customer_keeps_nulls_and_empty_strings_apart() {
    let c = Contact {
        firstname: None,
        lastname: Some(String::new()),
        email: Some(String::new()),
        phone_number: None,
        st_address: Some(String::new()),
        city: None,
        state: Some(String::new()),
        zip: None,
        created_by: None,
        ..contact()
    };
    let p = project_contact(&c, &rules());
    assert_eq!(
        p.customer,
        Customer {
            firstname: None,
            lastname: Some(String::new()),
            email: Some(String::new()),
            phone1: None,
            address1: Some(String::new()),
            city: None,
            state: Some(String::new()),
            zip: None,
            created_by: None,
            ..expected_customer(&contact())
        }
    );
}

#[test]
fn lead_status_makes_one_lead_with_every_column() {
    let c = Contact {
        lead_status: Some("qualified".into()),
        lead_source: Some("web".into()),
        tags: Some("vip,solar".into()),
        appointment_status_id: Some(3),
        priority: Some(1),
        ..contact()
    };
    let p = project_contact(&c, &rules());
    assert_eq!(p.customer, expected_customer(&c));
    assert_eq!(
        p.lead,
        Some(Lead {
            id: lead_id_for(id(0xC1)),
            customer_id: id(0xC1),
            workspace_id: id(0xA1),
            productid: "SOLAR".into(),
            source: "web".into(),
            sourcesubdescr: None,
            disposition: "qualified".into(),
            stg_id: 3,
            priority: 1,
            entrydate: ts("2023-01-02 03:04:05.123456"),
            lastchangedon: ts("2023-06-07 08:09:10.5"),
            created_at: ts("2023-01-02 03:04:05.123456"),
            updated_at: ts("2023-06-07 08:09:10.5"),
            created_by: Some(id(0xB1)),
            migrated_from_contact_id: id(0xC1),
        })
    );
    assert_eq!(p.appointment, None);
}

#[test]
fn empty_lead_status_and_source_are_values() {
    let c = Contact {
        lead_status: Some(String::new()),
        lead_source: Some(String::new()),
        ..contact()
    };
    let lead = project_contact(&c, &rules()).lead.unwrap();
    assert_eq!(lead.disposition, "");
    assert_eq!(lead.source, "");
}

#[test]
fn null_source_becomes_unknown_and_null_priority_three() {
    let c = Contact {
        lead_status: Some("new".into()),
        lead_source: None,
        priority: None,
        ..contact()
    };
    let lead = project_contact(&c, &rules()).lead.unwrap();
    assert_eq!(lead.source, "Unknown");
    assert_eq!(lead.priority, 3);
    let c = Contact {
        priority: Some(0),
        ..c
    };
    assert_eq!(project_contact(&c, &rules()).lead.unwrap().priority, 0);
}

#[test]
fn stage_follows_status_one_to_four_else_one() {
    let cases = [
        (None, 1),
        (Some(-1), 1),
        (Some(0), 1),
        (Some(1), 1),
        (Some(2), 2),
        (Some(3), 3),
        (Some(4), 4),
        (Some(5), 1),
        (Some(6), 1),
        (Some(7), 1),
        (Some(99), 1),
    ];
    for (status, stage) in cases {
        let c = Contact {
            lead_status: Some("new".into()),
            appointment_status_id: status,
            ..contact()
        };
        let lead = project_contact(&c, &rules()).lead.unwrap();
        assert_eq!(lead.stg_id, stage, "appointment_status_id {status:?}");
    }
}

#[test]
fn product_rules_first_match_wins_and_are_case_sensitive_by_default() {
    let cases = [
        (None, "DEFAULT"),
        (Some(""), "DEFAULT"),
        (Some("vip"), "DEFAULT"),
        (Some("solar"), "SOLAR"),
        (Some("residential solar"), "SOLAR"),
        (Some("Solar"), "DEFAULT"),
        (Some("SOLAR panels"), "DEFAULT"),
        (Some("hvac"), "HVAC"),
        (Some("hvac-repair"), "HVAC"),
        (Some("roofing,vip"), "ROOFING"),
        // Several products: rule order decides, not position in the tags.
        (Some("roofing,solar"), "SOLAR"),
        (Some("hvac,roofing"), "HVAC"),
        (Some("roofing,hvac,solar"), "SOLAR"),
    ];
    for (tags, product) in cases {
        let c = Contact {
            lead_status: Some("new".into()),
            tags: tags.map(str::to_owned),
            ..contact()
        };
        let lead = project_contact(&c, &rules()).lead.unwrap();
        assert_eq!(lead.productid, product, "tags {tags:?}");
    }
}

#[test]
fn product_rules_can_be_configured_and_case_insensitive() {
    let custom = ProductRules::new(&parse_rules("Roof=ROOFING,sun=SOLAR").unwrap(), false);
    assert_eq!(custom.product_for(Some("Roof and sun")), "ROOFING");
    assert_eq!(custom.product_for(Some("roof, sun")), "SOLAR");
    assert_eq!(custom.product_for(Some("solar")), "DEFAULT");

    let loose = ProductRules::new(&parse_rules("solar=SOLAR,HVAC=HVAC").unwrap(), true);
    assert_eq!(loose.product_for(Some("Solar")), "SOLAR");
    assert_eq!(loose.product_for(Some("SOLAR panels")), "SOLAR");
    assert_eq!(loose.product_for(Some("Hvac")), "HVAC");
    assert_eq!(loose.product_for(Some("gutters")), "DEFAULT");
    assert_eq!(loose.product_for(None), "DEFAULT");
}

fn with_appointment(status: Option<i64>, result: Option<i64>) -> Contact {
    Contact {
        lead_status: Some("appointment_set".into()),
        appointment_status_id: status,
        appointment_result_id: result,
        appointment_date: Some(ts("2024-03-01 10:30:00.25")),
        ..contact()
    }
}

#[test]
fn appointment_has_every_column() {
    let c = with_appointment(Some(5), Some(2));
    let p = project_contact(&c, &rules());
    assert_eq!(
        p.appointment,
        Some(Appointment {
            id: appointment_id_for(id(0xC1)),
            lead_id: lead_id_for(id(0xC1)),
            workspace_id: id(0xA1),
            apptdate: ts("2024-03-01 10:30:00.25"),
            disposition: "No Show".into(),
            apptset: true,
            verified: true,
            confirmed: false,
            setdate: ts("2024-02-29 10:30:00.25"),
            verifieddate: ts("2024-03-01 06:30:00.25"),
            confirmeddate: ts("2024-03-01 09:30:00.25"),
            lastchangeddate: ts("2023-06-07 08:09:10.5"),
            created_at: ts("2023-01-02 03:04:05.123456"),
            updated_at: ts("2023-06-07 08:09:10.5"),
            created_by: Some(id(0xB1)),
            migrated_from_contact_id: id(0xC1),
        })
    );
    assert_eq!(
        p.lead.unwrap().stg_id,
        1,
        "status 5 is past the lead stages"
    );
}

#[test]
fn appointment_flags_follow_status() {
    let cases = [
        (None, (false, false, false)),
        (Some(0), (false, false, false)),
        (Some(1), (false, false, false)),
        (Some(2), (false, false, false)),
        (Some(3), (false, false, false)),
        (Some(4), (true, false, false)),
        (Some(5), (true, true, false)),
        (Some(6), (true, true, true)),
        (Some(7), (true, true, true)),
    ];
    for (status, (apptset, verified, confirmed)) in cases {
        let a = project_contact(&with_appointment(status, None), &rules())
            .appointment
            .unwrap();
        assert_eq!(
            (a.apptset, a.verified, a.confirmed),
            (apptset, verified, confirmed),
            "appointment_status_id {status:?}"
        );
    }
}

#[test]
fn appointment_disposition_follows_result() {
    let cases = [
        (None, "Pending"),
        (Some(0), "Pending"),
        (Some(1), "Show"),
        (Some(2), "No Show"),
        (Some(3), "Cancelled"),
        (Some(4), "Reschedule"),
        (Some(5), "Pending"),
        (Some(-3), "Pending"),
    ];
    for (result, disposition) in cases {
        let a = project_contact(&with_appointment(Some(4), result), &rules())
            .appointment
            .unwrap();
        assert_eq!(
            a.disposition, disposition,
            "appointment_result_id {result:?}"
        );
    }
}

#[test]
fn appointment_dates_cross_day_and_month_boundaries() {
    let c = Contact {
        appointment_date: Some(ts("2024-03-01 00:30:00")),
        ..with_appointment(Some(6), Some(1))
    };
    let a = project_contact(&c, &rules()).appointment.unwrap();
    assert_eq!(a.setdate, ts("2024-02-29 00:30:00"));
    assert_eq!(a.verifieddate, ts("2024-02-29 20:30:00"));
    assert_eq!(a.confirmeddate, ts("2024-02-29 23:30:00"));
}

#[test]
fn derived_ids_are_uuid_v5_of_the_contact() {
    // Same as SQL: uuid_generate_v5(uuid_ns_url(), 'leadsync:lead:' || id).
    let contact_id: Uuid = "3f1c1a1e-0000-4000-8000-000000000001".parse().unwrap();
    let name = "leadsync:lead:3f1c1a1e-0000-4000-8000-000000000001";
    assert_eq!(
        lead_id_for(contact_id),
        Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
    );
    assert_eq!(lead_id_for(contact_id).get_version_num(), 5);
    assert_ne!(lead_id_for(contact_id), appointment_id_for(contact_id));
    assert_eq!(
        Uuid::NAMESPACE_URL.to_string(),
        "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
    );
    // Stable across calls and distinct across contacts.
    assert_eq!(lead_id_for(contact_id), lead_id_for(contact_id));
    assert_ne!(lead_id_for(id(1)), lead_id_for(id(2)));
}

fn value(field: u128) -> FieldValue {
    FieldValue {
        contact_id: id(0xC1),
        field_id: id(field),
        value: Some("{\"a\": 1}".into()),
        created_at: ts("2023-02-01 00:00:00"),
        updated_at: ts("2023-02-02 00:00:00"),
        created_by: None,
    }
}

#[test]
fn field_context_reads_the_column() {
    assert_eq!(FieldContext::from_column(None), FieldContext::Contact);
    assert_eq!(
        FieldContext::from_column(Some("contact")),
        FieldContext::Contact
    );
    assert_eq!(FieldContext::from_column(Some("lead")), FieldContext::Lead);
    assert_eq!(
        FieldContext::from_column(Some("appointment")),
        FieldContext::Appointment
    );
    assert_eq!(
        FieldContext::from_column(Some("Lead")),
        FieldContext::Other("Lead".into())
    );
}

#[test]
fn values_route_by_context_to_live_parents() {
    let full = project_contact(&with_appointment(Some(4), None), &rules());
    let routed = |ctx: FieldContext, parent: Option<&ContactProjection>| {
        route_field_value(&value(0xF1), &ctx, parent)
    };
    let expect = |table, parent_id| RoutedValue {
        table,
        parent_id,
        field_id: id(0xF1),
        value: Some("{\"a\": 1}".into()),
        created_at: ts("2023-02-01 00:00:00"),
        updated_at: ts("2023-02-02 00:00:00"),
        created_by: None,
    };
    assert_eq!(
        routed(FieldContext::Contact, Some(&full)),
        Ok(expect(ValueTable::CustomerCustomFields, id(0xC1)))
    );
    assert_eq!(
        routed(FieldContext::Lead, Some(&full)),
        Ok(expect(ValueTable::LeadCustomFields, lead_id_for(id(0xC1))))
    );
    assert_eq!(
        routed(FieldContext::Appointment, Some(&full)),
        Ok(expect(
            ValueTable::AppointmentCustomFields,
            appointment_id_for(id(0xC1))
        ))
    );
    assert_eq!(
        routed(FieldContext::Other("deal".into()), Some(&full)),
        Err(Unroutable::UnknownContext("deal".into()))
    );
}

#[test]
fn values_without_their_parent_are_unroutable() {
    let bare = project_contact(&contact(), &rules());
    let lead_only = project_contact(
        &Contact {
            lead_status: Some("new".into()),
            ..contact()
        },
        &rules(),
    );
    let v = value(0xF2);
    assert_eq!(
        route_field_value(&v, &FieldContext::Contact, None),
        Err(Unroutable::NoContact)
    );
    assert_eq!(
        route_field_value(&v, &FieldContext::Lead, None),
        Err(Unroutable::NoContact)
    );
    assert_eq!(
        route_field_value(&v, &FieldContext::Lead, Some(&bare)),
        Err(Unroutable::NoLead)
    );
    assert_eq!(
        route_field_value(&v, &FieldContext::Appointment, Some(&bare)),
        Err(Unroutable::NoAppointment)
    );
    assert_eq!(
        route_field_value(&v, &FieldContext::Appointment, Some(&lead_only)),
        Err(Unroutable::NoAppointment)
    );
    assert!(route_field_value(&v, &FieldContext::Lead, Some(&lead_only)).is_ok());
}

#[test]
fn null_json_and_sql_null_values_are_kept_apart() {
    let p = project_contact(&contact(), &rules());
    let sql_null = FieldValue {
        value: None,
        ..value(0xF3)
    };
    let json_null = FieldValue {
        value: Some("null".into()),
        ..value(0xF3)
    };
    let a = route_field_value(&sql_null, &FieldContext::Contact, Some(&p)).unwrap();
    let b = route_field_value(&json_null, &FieldContext::Contact, Some(&p)).unwrap();
    assert_eq!(a.value, None);
    assert_eq!(b.value.as_deref(), Some("null"));
}

#[test]
fn misfits_name_column_limit_and_length() {
    let c = Contact {
        phone_number: Some("(555) 123-4567 ext. 1234".into()),
        email: Some(format!("{}@example.com", "x".repeat(250))),
        state: Some("é".repeat(50)),
        lead_status: Some("d".repeat(101)),
        ..contact()
    };
    let found = misfits(&project_contact(&c, &rules()), &ColumnLimits::default());
    assert_eq!(
        found,
        vec![
            Misfit {
                column: "customers.email",
                source_column: "email",
                limit: 255,
                length: 262
            },
            Misfit {
                column: "customers.phone1",
                source_column: "phone_number",
                limit: 20,
                length: 24
            },
            Misfit {
                column: "leads.disposition",
                source_column: "lead_status",
                limit: 100,
                length: 101
            },
        ],
        "50 two-byte characters still fit VARCHAR(50)"
    );
    assert!(
        misfits(
            &project_contact(&contact(), &rules()),
            &ColumnLimits::default()
        )
        .is_empty()
    );
}

#[test]
fn every_length_limit_is_checked() {
    let long = |n: usize| Some("x".repeat(n));
    let c = Contact {
        firstname: long(256),
        lastname: long(256),
        email: long(256),
        phone_number: long(21),
        city: long(101),
        state: long(51),
        zip: long(21),
        lead_status: long(101),
        lead_source: long(256),
        tags: Some("solar".into()),
        ..contact()
    };
    let wide = ProductRules::new(
        &parse_rules(&format!("solar={}", "P".repeat(101))).unwrap(),
        false,
    );
    let columns: Vec<&str> = misfits(&project_contact(&c, &wide), &ColumnLimits::default())
        .iter()
        .map(|m| m.column)
        .collect();
    let all: Vec<&str> = LENGTH_LIMITS.iter().map(|(c, _, _)| *c).collect();
    assert_eq!(columns, all);
    let at_limit = Contact {
        firstname: long(255),
        phone_number: long(20),
        zip: long(20),
        ..contact()
    };
    assert!(
        misfits(
            &project_contact(&at_limit, &rules()),
            &ColumnLimits::default()
        )
        .is_empty()
    );
}

#[test]
fn widened_columns_take_longer_values() {
    let c = Contact {
        phone_number: Some("(555) 123-4567 ext. 1234".into()),
        lead_status: Some("d".repeat(101)),
        ..contact()
    };
    let p = project_contact(&c, &rules());
    let widened = ColumnLimits::default().with("customers.phone1", Some(40));
    let found: Vec<&str> = misfits(&p, &widened).iter().map(|m| m.column).collect();
    assert_eq!(found, ["leads.disposition"]);
    let text = widened.with("leads.disposition", None);
    assert!(misfits(&p, &text).is_empty());
    assert_eq!(text.limit("customers.phone1"), Some(40));
    assert_eq!(text.limit("leads.disposition"), None);
    assert_eq!(text.limit("customers.nope"), None);
    for (column, _, limit) in LENGTH_LIMITS {
        assert_eq!(ColumnLimits::default().limit(column), Some(*limit));
    }
}

#[test]
fn timestamps_keep_microseconds() {
    let c = Contact {
        created_at: NaiveDate::from_ymd_opt(2023, 1, 1)
            .unwrap()
            .and_hms_micro_opt(0, 0, 0, 1)
            .unwrap()
            .into(),
        ..contact()
    };
    let p = project_contact(&c, &rules());
    assert_eq!(p.customer.dateadded, c.created_at);
    assert_eq!(p.customer.created_at, c.created_at);
}
