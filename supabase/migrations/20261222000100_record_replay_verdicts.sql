-- The replay's verdicts (issue 19, item 4): each replayed pair's verdict on its own rows (basis 'replay') carries
-- a Benjamini-Hochberg q_value across the replay's succeeded pairs, known only once they are all done. The replay
-- then writes every pair's verdict into its record (record.verdict, jsonb_set of one key) with one call, one
-- transaction: a replay never holds half its q-values.

create or replace function public.record_replay_verdicts(p_replay_id uuid, p_verdicts jsonb)
returns integer
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
  v_n integer;
begin
  if p_verdicts is null or jsonb_typeof(p_verdicts) <> 'array' then
    raise exception 'record_replay_verdicts: p_verdicts must be a JSON array of {symbol, timeframe, verdict}';
  end if;
  update public.ml_replay_pairs p
     set record = jsonb_set(p.record, '{verdict}', v.verdict)
    from jsonb_to_recordset(p_verdicts) as v(symbol text, timeframe text, verdict jsonb)
   where p.replay_id = p_replay_id and p.symbol = v.symbol and p.timeframe = v.timeframe
     and p.record is not null and v.verdict is not null;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

revoke execute on function public.record_replay_verdicts(uuid, jsonb) from public, anon, authenticated;
grant execute on function public.record_replay_verdicts(uuid, jsonb) to service_role;

comment on function public.record_replay_verdicts(uuid, jsonb) is
  'Set record.verdict (p_value, q_value, fdr, basis replay, ...) of a replay''s pairs, all in one transaction; '
  'returns the number of pair rows changed.';
