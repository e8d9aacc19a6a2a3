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

-- setup hands the runtime role its tables; setup and teardown alter and drop them
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

-- creates the target tables
GRANT USAGE, CREATE ON SCHEMA public TO leadsync_installer;

-- foreign keys of the target tables
GRANT REFERENCES ON public.workspaces, public.custom_fields TO leadsync_installer;

-- the target tables' row-level-security policies read it
GRANT SELECT ON public.workspace_users TO leadsync_installer;

-- the target tables refer to auth.users and their policies call auth.uid()
GRANT USAGE ON SCHEMA auth TO leadsync_installer;

-- foreign keys of the target tables
GRANT REFERENCES ON auth.users TO leadsync_installer;

-- setup creates the replication origin (the checkpoint), teardown drops it
GRANT EXECUTE ON FUNCTION
    pg_replication_origin_create(text),
    pg_replication_origin_drop(text)
  TO leadsync_installer;

-- Runtime role leadsync_runtime: leadsync run and every other command.

-- connects
ALTER ROLE leadsync_runtime LOGIN;

-- creates its replication slot on the first run and streams from it
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

-- the first load sets the target tables' foreign keys into them aside and adds them back,
-- validated, when it commits (without it they are checked row by row)
GRANT REFERENCES ON public.workspaces, public.custom_fields TO leadsync_runtime;

-- reaches auth.users, into which the first load adds the target tables' foreign keys back
GRANT USAGE ON SCHEMA auth TO leadsync_runtime;

-- the first load sets the target tables' foreign keys into it aside and adds them back,
-- validated, when it commits (without it they are checked row by row)
GRANT REFERENCES ON auth.users TO leadsync_runtime;

-- reverse sync writes edits of migrated customers back to their contacts
GRANT UPDATE (firstname, lastname, email, phone_number, st_address, city, state, zip, updated_at) ON public.contacts TO leadsync_runtime;

-- reaches the target tables; the first load drops their indexes and builds them again once
-- the rows are in, and PostgreSQL builds an index only for a role with CREATE on the
-- table's schema (CREATE may be revoked once the first load is done, until another one)
GRANT USAGE, CREATE ON SCHEMA public TO leadsync_runtime;

-- checkpoints: binds the replication origin to its session (which also keeps a second
-- daemon standing by), sets the checkpoint in each transaction, reads it back
GRANT EXECUTE ON FUNCTION
    pg_replication_origin_session_setup(text),
    pg_replication_origin_session_reset(),
    pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone),
    pg_replication_origin_xact_reset(),
    pg_replication_origin_progress(text, boolean),
    pg_replication_origin_session_progress(boolean)
  TO leadsync_runtime;

COMMIT;

-- Done by `leadsync setup --runtime-role leadsync_runtime` as the installer, once the
-- objects exist (shown here, not run):
--
-- reaches leadsync's own tables; the first load rebuilds their indexes
--   GRANT USAGE, CREATE ON SCHEMA leadsync TO leadsync_runtime;
--
-- writes the rows it owns; the first load sets the tables' indexes and keys aside and
-- rebuilds them, which only their owner may do; their owner is not subject to their
-- row-level security (BYPASSRLS would lift every policy of every table in the cluster)
--   ALTER TABLE public.customers OWNER TO leadsync_runtime;
--   ALTER TABLE public.leads OWNER TO leadsync_runtime;
--   ALTER TABLE public.appointments OWNER TO leadsync_runtime;
--   ALTER TABLE public.customer_custom_fields OWNER TO leadsync_runtime;
--   ALTER TABLE public.lead_custom_fields OWNER TO leadsync_runtime;
--   ALTER TABLE public.appointment_custom_fields OWNER TO leadsync_runtime;
--
-- its checkpoint state, dead letters and resync requests; the first load truncates and
-- re-indexes them
--   ALTER TABLE leadsync.* OWNER TO leadsync_runtime;
