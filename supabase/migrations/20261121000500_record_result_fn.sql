-- record_training_result: one transaction for a pair's result row and its model version, so a run never leaves a
-- result without its model version (or the reverse). Called by the job through PostgREST `.rpc(...)`.

create or replace function public.record_training_result(p_result jsonb, p_model_version jsonb default null)
returns void
language plpgsql
security invoker
set search_path = public
as $$
begin
  insert into public.training_results (
    run_id, symbol, timeframe, status, error, horizon_bars, n_train, n_valid, n_test,
    split, weights, metrics, artifact_path, artifact_sha256, duration_s)
  select r.run_id, r.symbol, r.timeframe, r.status, r.error, r.horizon_bars, r.n_train, r.n_valid, r.n_test,
         r.split, r.weights, r.metrics, r.artifact_path, r.artifact_sha256, r.duration_s
  from jsonb_populate_record(null::public.training_results, p_result) as r;

  if p_model_version is not null and jsonb_typeof(p_model_version) = 'object' then
    insert into public.model_versions (
      symbol, timeframe, run_id, artifact_path, artifact_sha256, feature_version, weights, metrics,
      trained_at, is_champion)
    select m.symbol, m.timeframe, m.run_id, m.artifact_path, m.artifact_sha256, m.feature_version, m.weights,
           m.metrics, m.trained_at, coalesce(m.is_champion, false)
    from jsonb_populate_record(null::public.model_versions, p_model_version) as m;
  end if;
end
$$;

revoke execute on function public.record_training_result(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.record_training_result(jsonb, jsonb) to service_role;
