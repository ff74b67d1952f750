-- A ledger that never lies: bookkeeping warnings on the run row, artifact signatures, heartbeats and the sweep of
-- dead runs on the database clock, and the pair universe in one call.

-- ---- columns -----------------------------------------------------------------------------------------------------------

alter table public.training_runs
  add column warnings jsonb;  -- ["one-line problem", ...]: retention/heartbeat/sweep errors that did not stop the run

-- HMAC-SHA256 of the artifact file under the deployment's ML_ARTIFACT_KEY (null when no key is configured); a loader
-- with the key refuses an artifact whose recorded signature is missing or wrong.
alter table public.training_results
  add column artifact_signature text,
  add constraint training_results_artifact_signature_check
    check (artifact_signature is null or artifact_signature ~ '^[0-9a-f]{64}$');
alter table public.model_versions
  add column artifact_signature text,
  add constraint model_versions_artifact_signature_check
    check (artifact_signature is null or artifact_signature ~ '^[0-9a-f]{64}$');

comment on column public.model_versions.artifact_path is
  'Path of the bundle RELATIVE to the job''s ML_MODELS_DIR (e.g. AAPL/d1/AAPL_d1_20260102T030405Z_1a2b3c4d.joblib).';

-- ---- record_training_result: every column the JSON carries --------------------------------------------------------------
-- Same contract as before (the result row and its model version in one transaction; the champion pointer moves in it
-- too), but the columns are taken from the JSON keys that are insertable columns of the table, so a column added by
-- a later migration is recorded without redefining this function again.

create or replace function public.record_training_result(p_result jsonb, p_model_version jsonb default null)
returns void
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
  v_champion boolean := coalesce((p_model_version ->> 'is_champion')::boolean, false);
  v_cols     text;
begin
  select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = 'public.training_results'::regclass and a.attnum > 0 and not a.attisdropped
     and a.attidentity = '' and a.attgenerated = '' and a.attname <> 'created_at'
     and p_result ? a.attname;
  execute format(
    'insert into public.training_results (%1$s) select %1$s from jsonb_populate_record(null::public.training_results, $1)',
    v_cols) using p_result;

  if p_model_version is not null and jsonb_typeof(p_model_version) = 'object' then
    if v_champion then
      update public.model_versions set is_champion = false
       where symbol = p_model_version ->> 'symbol' and timeframe = p_model_version ->> 'timeframe' and is_champion;
    end if;
    select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into v_cols
      from pg_attribute a
     where a.attrelid = 'public.model_versions'::regclass and a.attnum > 0 and not a.attisdropped
       and a.attidentity = '' and a.attgenerated = ''
       and a.attname not in ('created_at', 'is_champion', 'promoted_at')
       and p_model_version ? a.attname;
    execute format(
      'insert into public.model_versions (%1$s, is_champion, promoted_at) '
      'select %1$s, $2, case when $2 then now() end '
      'from jsonb_populate_record(null::public.model_versions, $1)',
      v_cols) using p_model_version, v_champion;
  end if;
end
$$;

revoke execute on function public.record_training_result(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.record_training_result(jsonb, jsonb) to service_role;

-- ---- heartbeats and the sweep of dead runs, on the database clock ----------------------------------------------------------

create function public.run_heartbeat(p_run_id uuid)
returns void
language sql
volatile
security invoker
set search_path = public, pg_temp
as $$
  update public.training_runs set heartbeat_at = now() where run_id = p_run_id;
$$;

-- Every run still 'running' whose last sign of life (heartbeat, else start) is older than p_ttl_seconds belongs to a
-- process that died without taking its leases with it (or whose leases were released before it could record its
-- end): mark it 'abandoned'. Returns the run ids it changed.
create function public.abandon_stale_runs(p_ttl_seconds integer, p_reason text, p_exclude uuid default null)
returns jsonb
language sql
volatile
security invoker
set search_path = public, pg_temp
as $$
  with stale as (
    update public.training_runs
       set status = 'abandoned', finished_at = now(), error = p_reason
     where status = 'running'
       and coalesce(heartbeat_at, started_at) < now() - make_interval(secs => p_ttl_seconds)
       and (p_exclude is null or run_id <> p_exclude)
    returning run_id
  )
  select coalesce(jsonb_agg(run_id order by run_id), '[]'::jsonb) from stale;
$$;

-- ---- the pair universe ------------------------------------------------------------------------------------------------------
-- Which of p_symbols x p_timeframes have at least one bar: one index probe per pair (works on a user's ohlc_bars view
-- too), returned as one JSON array [[symbol, timeframe], ...] so PostgREST's row cap never truncates it.

create function public.pairs_with_bars(p_symbols text[], p_timeframes text[])
returns jsonb
language sql
stable
security invoker
set search_path = public, pg_temp
as $$
  select coalesce(jsonb_agg(jsonb_build_array(p.symbol, p.timeframe) order by p.symbol, p.timeframe), '[]'::jsonb)
    from (select distinct s.symbol, t.timeframe
            from unnest(p_symbols) as s(symbol) cross join unnest(p_timeframes) as t(timeframe)) as p
   where exists (select 1 from public.ohlc_bars b where b.symbol = p.symbol and b.timeframe = p.timeframe);
$$;

revoke all on function public.run_heartbeat(uuid) from public, anon, authenticated;
revoke all on function public.abandon_stale_runs(integer, text, uuid) from public, anon, authenticated;
revoke all on function public.pairs_with_bars(text[], text[]) from public, anon, authenticated;
grant execute on function public.run_heartbeat(uuid) to service_role;
grant execute on function public.abandon_stale_runs(integer, text, uuid) to service_role;
grant execute on function public.pairs_with_bars(text[], text[]) to service_role;
