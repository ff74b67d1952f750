-- Supabase's API roles, grants, default privileges and PostgREST schema-reload hooks, for a BARE PostgreSQL cluster.
--
-- For the local test stack only (scripts/local_supabase.sh applies it before supabase/migrations/*.sql). Hosted
-- Supabase (and `supabase start`) already have all of this; the migrations must never depend on anything here that
-- hosted Supabase lacks. Modelled on the roles/grants part of supabase/postgres
-- migrations/db/init-scripts/00000000000000-initial-schema.sql.
--
-- Plain SQL (no psql variables), idempotent, run as the cluster superuser `postgres`:
--   * roles are cluster-wide: created once, skipped when they exist;
--   * schema grants, default privileges and event triggers are per database: re-run it in every new database that
--     should look like a Supabase one (tests/test_supabase_schema.py does so for its replay database).
-- The authenticator's password is not set here; local_supabase.sh sets a random one per stack.

-- ---- roles (cluster-wide) ------------------------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;   -- the "secret" key's role: RLS does not apply to it
  end if;
  -- PostgREST logs in as authenticator and SET ROLEs to the verified JWT's `role` claim (anon when no JWT).
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end $$;

grant anon, authenticated, service_role to authenticator;

-- Supabase's per-role statement timeouts for API requests.
alter role anon          set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- ---- per-database part -----------------------------------------------------------------------------------------------
create schema if not exists extensions;
grant usage on schema public, extensions to postgres, anon, authenticated, service_role;

-- Supabase's default: everything `postgres` creates in public is fully granted to the API roles, and access is then
-- narrowed by RLS policies (and, in this project's migrations, by explicit revokes).
alter default privileges for role postgres in schema public grant all on tables    to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to postgres, anon, authenticated, service_role;

-- Like Supabase (same command/object lists): DDL notifies PostgREST (channel `pgrst`) to reload its schema cache. The reload is asynchronous,
-- which is why local_supabase.sh applies the migrations before PostgREST starts.
create or replace function extensions.pgrst_ddl_watch() returns event_trigger
language plpgsql as $$
declare cmd record;
begin
  for cmd in select * from pg_event_trigger_ddl_commands() loop
    if cmd.command_tag in ('CREATE SCHEMA', 'ALTER SCHEMA', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                           'ALTER TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE VIEW', 'ALTER VIEW',
                           'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW', 'CREATE FUNCTION',
                           'ALTER FUNCTION', 'CREATE TRIGGER', 'CREATE TYPE', 'ALTER TYPE', 'CREATE RULE',
                           'COMMENT')
       and cmd.schema_name is distinct from 'pg_temp' then
      notify pgrst, 'reload schema';
      return;
    end if;
  end loop;
end $$;

create or replace function extensions.pgrst_drop_watch() returns event_trigger
language plpgsql as $$
declare obj record;
begin
  for obj in select * from pg_event_trigger_dropped_objects() loop
    if obj.object_type in ('schema', 'table', 'foreign table', 'view', 'materialized view', 'function',
                           'trigger', 'type', 'rule')
       and obj.is_temporary is false then
      notify pgrst, 'reload schema';
      return;
    end if;
  end loop;
end $$;

do $$
begin
  if not exists (select 1 from pg_event_trigger where evtname = 'pgrst_ddl_watch') then
    create event trigger pgrst_ddl_watch on ddl_command_end execute function extensions.pgrst_ddl_watch();
  end if;
  if not exists (select 1 from pg_event_trigger where evtname = 'pgrst_drop_watch') then
    create event trigger pgrst_drop_watch on sql_drop execute function extensions.pgrst_drop_watch();
  end if;
end $$;
