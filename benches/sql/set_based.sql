-- The guide's Phase 1 and Phase 2 mapping (benches/sql/guide_do_blocks.sql) as set-based
-- SQL: one INSERT … SELECT per table, no batches, no loop. The guide's skip-if-migrated
-- rules are kept, written as NOT IN so that the planner hashes the subquery (a NOT EXISTS
-- against the table being inserted into falls into the self anti-join trap described in
-- notes/guide-sql-baseline.md). Every NOT IN subquery filters out NULLs, so NOT IN means
-- what NOT EXISTS meant.
--
-- benches/backfill.rs runs each `-- step:` as its own statement (its own transaction).

-- step: customers
INSERT INTO customers (
    cst_id, workspace_id, firstname, lastname, email, phone1, phone2,
    address1, city, state, zip, country,
    dateadded, lastchanged, created_at, updated_at, created_by,
    migrated_from_contact_id, migration_timestamp
)
SELECT
    c.id, c.workspace_id, c.firstname, c.lastname, c.email, c.phone_number, NULL,
    c.st_address, c.city, c.state, c.zip, 'US',
    c.created_at, c.updated_at, c.created_at, c.updated_at, c.created_by,
    c.id, NOW()
FROM contacts c
WHERE c.id NOT IN (SELECT cst_id FROM customers WHERE migrated_from_contact_id IS NOT NULL)
ON CONFLICT (cst_id) DO NOTHING;

-- step: leads
INSERT INTO leads (
    customer_id, workspace_id, productid, source, sourcesubdescr, disposition,
    stg_id, priority, entrydate, lastchangedon,
    created_at, updated_at, created_by,
    migrated_from_contact_id, migration_timestamp
)
SELECT
    c.id, c.workspace_id,
    CASE
        WHEN c.tags LIKE '%solar%' THEN 'SOLAR'
        WHEN c.tags LIKE '%hvac%' THEN 'HVAC'
        WHEN c.tags LIKE '%roofing%' THEN 'ROOFING'
        ELSE 'DEFAULT'
    END,
    COALESCE(c.lead_source, 'Unknown'),
    NULL,
    c.lead_status,
    CASE
        WHEN c.appointment_status_id = 1 THEN 1
        WHEN c.appointment_status_id = 2 THEN 2
        WHEN c.appointment_status_id = 3 THEN 3
        WHEN c.appointment_status_id = 4 THEN 4
        ELSE 1
    END,
    COALESCE(c.priority, 3),
    c.created_at, c.updated_at,
    c.created_at, c.updated_at, c.created_by,
    c.id, NOW()
FROM contacts c
WHERE c.lead_status IS NOT NULL
  AND c.id NOT IN (SELECT customer_id FROM leads WHERE migrated_from_contact_id IS NOT NULL);

-- step: context_update
UPDATE custom_fields SET context_type = 'contact' WHERE context_type IS NULL;

-- step: custom_fields
INSERT INTO customer_custom_fields (
    customer_id, field_id, value,
    created_at, updated_at, created_by
)
SELECT
    ccf.contact_id, ccf.field_id, ccf.value,
    ccf.created_at, ccf.updated_at, ccf.created_by
FROM contact_custom_fields ccf
WHERE (ccf.contact_id, ccf.field_id) NOT IN (
        SELECT customer_id, field_id FROM customer_custom_fields)
  AND EXISTS (SELECT 1 FROM customers c WHERE c.cst_id = ccf.contact_id)
ON CONFLICT (customer_id, field_id) DO NOTHING;

-- step: appointments
INSERT INTO appointments (
    lead_id, workspace_id, apptdate, disposition,
    apptset, verified, confirmed,
    setdate, verifieddate, confirmeddate,
    created_at, updated_at,
    migrated_from_contact_id, migration_timestamp
)
SELECT
    l.id,
    c.workspace_id,
    c.appointment_date,
    CASE
        WHEN c.appointment_result_id = 1 THEN 'Show'
        WHEN c.appointment_result_id = 2 THEN 'No Show'
        WHEN c.appointment_result_id = 3 THEN 'Cancelled'
        WHEN c.appointment_result_id = 4 THEN 'Reschedule'
        ELSE 'Pending'
    END,
    CASE WHEN c.appointment_status_id >= 4 THEN TRUE ELSE FALSE END,
    CASE WHEN c.appointment_status_id >= 5 THEN TRUE ELSE FALSE END,
    CASE WHEN c.appointment_status_id >= 6 THEN TRUE ELSE FALSE END,
    c.appointment_date - INTERVAL '1 day',
    c.appointment_date - INTERVAL '4 hours',
    c.appointment_date - INTERVAL '1 hour',
    c.created_at, c.updated_at,
    c.id, NOW()
FROM contacts c
JOIN leads l ON l.customer_id = c.id AND l.migrated_from_contact_id = c.id
WHERE c.appointment_date IS NOT NULL
  AND (l.id, c.id) NOT IN (
        SELECT lead_id, migrated_from_contact_id FROM appointments
        WHERE migrated_from_contact_id IS NOT NULL);
