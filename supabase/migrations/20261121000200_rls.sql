-- Access control for the Data API (PostgREST) roles.
--
--   anon           (publishable/anon key, no user): may read symbols and ohlc_bars, nothing else; never writes.
--   authenticated  (a signed-in user's JWT):        may read every table; never writes.
--   service_role   (secret/service key; the job):  full access; has BYPASSRLS in Supabase, so no policies needed.
--
-- Two layers: RLS on every table (no insert/update/delete policies for anon/authenticated => no writes even if a
-- grant slipped in), and table privileges (defence in depth: anon has no privilege at all on the ML tables, and
-- neither API role can insert/update/delete/truncate anything). Supabase's default privileges grant ALL on new
-- tables to anon/authenticated/service_role; we revoke everything from anon/authenticated and grant back exactly what
-- the policies allow, so the result does not depend on the database's default privileges.
-- The tables are listed explicitly (not "all tables in schema public") so that a user's own tables in public keep
-- their privileges. A table added by a later migration must be added to that migration's own RLS/grant section.

-- ---- RLS on every table ------------------------------------------------------------------------------------------------
alter table public.symbols          enable row level security;
alter table public.ohlc_bars        enable row level security;
alter table public.feature_cache    enable row level security;
alter table public.training_runs    enable row level security;
alter table public.training_results enable row level security;
alter table public.model_versions   enable row level security;
alter table public.job_leases       enable row level security;

-- ---- privileges ---------------------------------------------------------------------------------------------------------
revoke all on table
  public.symbols, public.ohlc_bars, public.feature_cache, public.training_runs, public.training_results,
  public.model_versions, public.job_leases
from anon, authenticated;

-- Market data is public (read-only) for anon; the ML tables are not visible to anon at all.
grant select on table public.symbols, public.ohlc_bars to anon;
grant select on table
  public.symbols, public.ohlc_bars, public.feature_cache, public.training_runs, public.training_results,
  public.model_versions, public.job_leases
to authenticated;
grant all on table
  public.symbols, public.ohlc_bars, public.feature_cache, public.training_runs, public.training_results,
  public.model_versions, public.job_leases
to service_role;

-- Identity sequences: only the job (service_role) inserts rows. ALL = usage, select, update: what Supabase's default
-- privileges give service_role, granted explicitly so the result is the same in a database without them.
revoke all on sequence public.training_results_id_seq, public.model_versions_id_seq from anon, authenticated;
grant all on sequence public.training_results_id_seq, public.model_versions_id_seq to service_role;

-- ---- policies (SELECT only; no write policies for anon/authenticated) ----------------------------------------------
create policy symbols_read on public.symbols
  for select to anon, authenticated using (true);
create policy ohlc_bars_read on public.ohlc_bars
  for select to anon, authenticated using (true);
create policy feature_cache_read on public.feature_cache
  for select to authenticated using (true);
create policy training_runs_read on public.training_runs
  for select to authenticated using (true);
create policy training_results_read on public.training_results
  for select to authenticated using (true);
create policy model_versions_read on public.model_versions
  for select to authenticated using (true);
create policy job_leases_read on public.job_leases
  for select to authenticated using (true);
