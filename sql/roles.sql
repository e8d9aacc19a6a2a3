-- leadsync: the installer and runtime database roles, and every privilege they need.
--
-- Printed by `leadsync setup --print-grants --installer-role leadsync_installer --runtime-role leadsync_runtime`;
-- sql/roles.sql is this text for the default role names and schemas. Legacy tables are
-- in schema `public`, target tables in schema `public`.
--
-- 1. As a superuser, connected to the legacy database, run this file:
--        psql -v ON_ERROR_STOP=1 -d DATABASE -f roles.sql
--    It can run again: what is in place stays as it is. It sets no passwords: give
--    each role one (psql: \password leadsync_runtime) or authenticate it otherwise.
-- 2. As the installer: leadsync setup --runtime-role leadsync_runtime
--    It creates the target tables and the leadsync schema and does the last part
--    below for the runtime role.
-- 3. As the runtime role: leadsync run, and every other command.

BEGIN;

DO $leadsync$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'leadsync_installer') THEN
    CREATE ROLE leadsync_installer;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'leadsync_runtime') THEN
    CREATE ROLE leadsync_runtime;
  END IF;
END $leadsync$;

-- Installer leadsync_installer: leadsync setup and leadsync teardown.

-- connects
ALTER ROLE leadsync_installer LOGIN;

-- teardown drops the replication slot
ALTER ROLE leadsync_installer REPLICATION;

-- teardown ends the runtime role's walsender that holds the slot; setup takes back tables
-- an older setup had handed to the runtime role
GRANT leadsync_runtime TO leadsync_installer;

-- connects; creates the leadsync schema and the publication
DO $leadsync$ BEGIN
  EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO %s', current_database(), 'leadsync_installer');
END $leadsync$;

-- reaches the legacy tables
GRANT USAGE ON SCHEMA public TO leadsync_installer;

-- adding custom_fields.context_type and publishing the legacy tables need their owner
-- (PostgreSQL has no grantable ALTER)
DO $leadsync$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT c.relname, r.rolname, r.rolsuper
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_roles r ON r.oid = c.relowner
    WHERE n.nspname = 'public' AND c.relname IN ('contacts', 'contact_custom_fields', 'custom_fields')
  LOOP
    IF pg_has_role('leadsync_installer', t.rolname, 'USAGE') THEN
      CONTINUE;
    ELSIF t.rolsuper THEN
      RAISE WARNING 'table %.% is owned by the superuser %: give it to the application''s owner role (ALTER TABLE ... OWNER TO ...) and run this again, or run leadsync setup as a superuser', 'public', t.relname, t.rolname;
    ELSE
      EXECUTE format('GRANT %I TO %I', t.rolname, 'leadsync_installer');
    END IF;
  END LOOP;
END $leadsync$;

-- creates the target tables, and owns them
GRANT USAGE, CREATE ON SCHEMA public TO leadsync_installer;

-- foreign keys of the target tables (which the first load sets aside and adds back through
-- the installer's functions)
GRANT REFERENCES ON public.workspaces, public.custom_fields TO leadsync_installer;

-- the target tables' row-level-security policies read it
GRANT SELECT ON public.workspace_users TO leadsync_installer;

-- the target tables refer to auth.users and their policies call auth.uid()
GRANT USAGE ON SCHEMA auth TO leadsync_installer;

-- foreign keys of the target tables
GRANT REFERENCES ON auth.users TO leadsync_installer;

-- setup creates the replication origin (the checkpoint), teardown drops it; the installer's
-- functions bind it and checkpoint through it for the runtime role, only for leadsync's own
-- origin
GRANT EXECUTE ON FUNCTION
    pg_replication_origin_create(text),
    pg_replication_origin_drop(text),
    pg_replication_origin_session_setup(text),
    pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone),
    pg_replication_origin_xact_reset(),
    pg_replication_origin_session_progress(boolean)
  TO leadsync_installer;

-- Runtime role leadsync_runtime: leadsync run and every other command.

-- connects
ALTER ROLE leadsync_runtime LOGIN;

-- creates its replication slot on the first run and streams from it (REPLICATION lets a
-- role decode every change of every table: see docs/roles-and-tls.md for the pg_hba.conf
-- lines that keep it to logical replication of this database)
ALTER ROLE leadsync_runtime REPLICATION;

-- connects
DO $leadsync$ BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %s', current_database(), 'leadsync_runtime');
END $leadsync$;

-- reaches the legacy tables
GRANT USAGE ON SCHEMA public TO leadsync_runtime;

-- the first load, resync, validate and report read them
GRANT SELECT ON public.contacts, public.contact_custom_fields, public.custom_fields TO leadsync_runtime;

-- assess reports per workspace, by name
GRANT SELECT ON public.workspaces TO leadsync_runtime;

-- reverse sync writes edits of migrated customers back to their contacts
GRANT UPDATE (firstname, lastname, email, phone_number, st_address, city, state, zip, updated_at) ON public.contacts TO leadsync_runtime;

COMMIT;

-- Done by `leadsync setup --runtime-role leadsync_runtime` as the installer, once the
-- objects exist (shown here, not run):
--
-- reaches leadsync's own tables and functions
--   GRANT USAGE ON SCHEMA leadsync TO leadsync_runtime;
--
-- writes the rows it projects; the installer owns the tables
--   GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers, public.leads, public.appointments, public.customer_custom_fields, public.lead_custom_fields, public.appointment_custom_fields TO leadsync_runtime;
--
-- sees and writes every row despite the tables' row-level security, and only these tables'
-- (BYPASSRLS would lift every policy of every table in the cluster; owning the tables would
-- let it put triggers on them that the application runs)
--   CREATE POLICY "leadsync daemon" ON public.customers FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--   CREATE POLICY "leadsync daemon" ON public.leads FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--   CREATE POLICY "leadsync daemon" ON public.appointments FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--   CREATE POLICY "leadsync daemon" ON public.customer_custom_fields FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--   CREATE POLICY "leadsync daemon" ON public.lead_custom_fields FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--   CREATE POLICY "leadsync daemon" ON public.appointment_custom_fields FOR ALL TO leadsync_runtime USING (true) WITH CHECK (true);
--
-- its checkpoint state, dead letters, resync requests, reverse-sync queue and history
--   GRANT SELECT, INSERT, UPDATE, DELETE ON leadsync.sync_state, leadsync.samples, leadsync.load_steps, leadsync.dead_letters, leadsync.contacts, leadsync.field_values, leadsync.fields, leadsync.resync_requests, leadsync.reverse_writes, leadsync.reverse_queue TO leadsync_runtime;
--
-- the first load empties leadsync's copy of the legacy rows
--   GRANT TRUNCATE ON leadsync.contacts, leadsync.field_values, leadsync.fields TO leadsync_runtime;
--
-- reads which foreign keys a first load set aside
--   GRANT SELECT ON leadsync.deferred_constraints TO leadsync_runtime;
--
-- the installer's functions: bind leadsync's replication origin and checkpoint through it;
-- set the first load's keys, indexes and row-level security aside and put them back (only a
-- table's owner may)
--   GRANT EXECUTE ON FUNCTION
--       leadsync.bind_origin(text),
--       leadsync.origin_xact_setup(pg_lsn, timestamp with time zone),
--       leadsync.origin_xact_reset(),
--       leadsync.origin_session_progress(boolean),
--       leadsync.set_aside_for_load(text),
--       leadsync.restore_after_load(text),
--       leadsync.set_aside_foreign_keys(),
--       leadsync.restore_foreign_keys()
--     TO leadsync_runtime;
