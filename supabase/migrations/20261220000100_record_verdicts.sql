-- Verdicts with false-discovery control (issue 19): a pair's verdict carries a one-sided p_value, and its
-- Benjamini-Hochberg q_value across the run's succeeded pairs, which is known only once they are all done. The
-- job then writes every pair's final verdict back with record_verdicts: one call, one transaction, so the
-- ledger never holds half a run's q-values. metrics.verdict is replaced whole (jsonb_set of one key; the rest of
-- the metrics JSON is untouched), in training_results and in the run's model versions.

create or replace function public.record_verdicts(p_run_id uuid, p_verdicts jsonb)
returns integer
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
  v_n integer;
begin
  if p_verdicts is null or jsonb_typeof(p_verdicts) <> 'array' then
    raise exception 'record_verdicts: p_verdicts must be a JSON array of {symbol, timeframe, verdict}';
  end if;
  update public.training_results r
     set metrics = jsonb_set(coalesce(r.metrics, '{}'::jsonb), '{verdict}', v.verdict)
    from jsonb_to_recordset(p_verdicts) as v(symbol text, timeframe text, verdict jsonb)
   where r.run_id = p_run_id and r.symbol = v.symbol and r.timeframe = v.timeframe
     and r.status = 'succeeded' and v.verdict is not null;
  get diagnostics v_n = row_count;
  update public.model_versions m
     set metrics = jsonb_set(coalesce(m.metrics, '{}'::jsonb), '{verdict}', v.verdict)
    from jsonb_to_recordset(p_verdicts) as v(symbol text, timeframe text, verdict jsonb)
   where m.run_id = p_run_id and m.symbol = v.symbol and m.timeframe = v.timeframe and v.verdict is not null;
  return v_n;
end
$$;

revoke execute on function public.record_verdicts(uuid, jsonb) from public, anon, authenticated;
grant execute on function public.record_verdicts(uuid, jsonb) to service_role;

comment on function public.record_verdicts(uuid, jsonb) is
  'Replace metrics.verdict (p_value, q_value, fdr, basis, ...) of a run''s succeeded results and their model '
  'versions, all pairs in one transaction; returns the number of result rows changed.';
