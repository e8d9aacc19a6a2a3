-- UPDATE mix, half 2: a random existing contact's email (one statement, autocommit).
-- -D N=<contacts>: contact i of fixtures/demo_data.sql has id md5('contact' || i)::uuid.
\set i random(1, :N)
\set r random(1, 1000000)
UPDATE contacts
   SET email = 'contact' || :i::text || '.' || :r::text || '@example.com',
       updated_at = now()
 WHERE id = md5('contact' || :i::text)::uuid;
