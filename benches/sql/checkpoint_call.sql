-- The server-side cost of setting the checkpoint through leadsync's installer-owned function
-- (`leadsync.origin_xact_setup`, SECURITY DEFINER with a fixed search_path) against calling
-- pg_replication_origin_xact_setup directly: 20,000 calls each, twice, alternating.
-- Run as a superuser on a throwaway database with wal_level=logical:
--   psql -X -d DB -f benches/sql/checkpoint_call.sql
\set ON_ERROR_STOP 1
SELECT pg_replication_origin_create('checkpoint_call_bench')
WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = 'checkpoint_call_bench');
CREATE SCHEMA IF NOT EXISTS checkpoint_call_bench;
CREATE OR REPLACE FUNCTION checkpoint_call_bench.origin_xact_setup(lsn pg_lsn, committed timestamptz)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $f$ SELECT pg_catalog.pg_replication_origin_xact_setup(lsn, committed) $f$;
SELECT pg_replication_origin_session_setup('checkpoint_call_bench');
\timing on
\echo direct
DO $$ BEGIN FOR i IN 1..20000 LOOP PERFORM pg_replication_origin_xact_setup('0/1', now()); PERFORM pg_replication_origin_xact_reset(); END LOOP; END $$;
\echo through the function
DO $$ BEGIN FOR i IN 1..20000 LOOP PERFORM checkpoint_call_bench.origin_xact_setup('0/1', now()); PERFORM pg_replication_origin_xact_reset(); END LOOP; END $$;
\echo direct
DO $$ BEGIN FOR i IN 1..20000 LOOP PERFORM pg_replication_origin_xact_setup('0/1', now()); PERFORM pg_replication_origin_xact_reset(); END LOOP; END $$;
\echo through the function
DO $$ BEGIN FOR i IN 1..20000 LOOP PERFORM checkpoint_call_bench.origin_xact_setup('0/1', now()); PERFORM pg_replication_origin_xact_reset(); END LOOP; END $$;
\timing off
SELECT pg_replication_origin_session_reset();
DROP SCHEMA checkpoint_call_bench CASCADE;
SELECT pg_replication_origin_drop('checkpoint_call_bench');
