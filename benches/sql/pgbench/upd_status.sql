-- UPDATE mix, half 1: a random existing contact's lead_status (one statement, autocommit).
-- -D N=<contacts>: contact i of fixtures/demo_data.sql has id md5('contact' || i)::uuid.
\set i random(1, :N)
\set s random(1, 6)
UPDATE contacts
   SET lead_status = (ARRAY['new', 'contacted', 'qualified', 'appointment_set', 'won', 'lost'])[:s],
       updated_at = now()
 WHERE id = md5('contact' || :i::text)::uuid;
