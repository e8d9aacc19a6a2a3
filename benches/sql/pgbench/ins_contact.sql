-- INSERT workload: one new contact with a lead status and two custom-field values, in one
-- transaction. -D W=<workspaces>: workspace w of fixtures/demo_data.sql has id
-- md5('workspace' || w)::uuid and its field f (0-7) md5('field' || w || '-' || f)::uuid;
-- fields 0 (budget) and 5 (referral_code) are contact-level in every workspace.
\set w random(1, :W)
\set k random(1, 4611686018427387903)
BEGIN;
INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number, st_address,
                      city, state, zip, lead_status, lead_source, tags, priority)
VALUES (md5('pgbench' || :k::text)::uuid, md5('workspace' || :w::text)::uuid,
        'Pat', 'Writer', 'new' || :k::text || '@example.com', '(512) 555-0100', '1 Main St',
        'Austin', 'TX', '78701', 'new', 'web', 'solar', 3);
INSERT INTO contact_custom_fields (contact_id, field_id, value)
VALUES (md5('pgbench' || :k::text)::uuid, md5('field' || :w::text || '-0')::uuid,
        to_jsonb(1000 + :k::bigint % 90000));
INSERT INTO contact_custom_fields (contact_id, field_id, value)
VALUES (md5('pgbench' || :k::text)::uuid, md5('field' || :w::text || '-5')::uuid,
        to_jsonb('REF-' || :k::text));
END;
