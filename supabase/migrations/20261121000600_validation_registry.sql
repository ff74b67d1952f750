-- Walk-forward results and promotion decisions on each result row; champion bookkeeping in the registry.

alter table public.training_results
  add column walk_forward jsonb,   -- {"folds": [...], "summary": {metric: {mean, std, min, max}}}
  add column promotion jsonb;      -- {"decision": "champion"|"challenger", "reason": ..., metric values}

alter table public.model_versions
  add column promoted_at timestamptz;

-- record_training_result now also moves the champion pointer: when the new version is the champion, the old one is
-- demoted in the same transaction, so a pair never has two champions and never loses its only one.
create or replace function public.record_training_result(p_result jsonb, p_model_version jsonb default null)
returns void
language plpgsql
security invoker
set search_path = public
as $$
declare
  v_champion boolean := coalesce((p_model_version ->> 'is_champion')::boolean, false);
begin
  insert into public.training_results (
    run_id, symbol, timeframe, status, error, horizon_bars, n_train, n_valid, n_test,
    split, weights, metrics, artifact_path, artifact_sha256, duration_s, walk_forward, promotion)
  select r.run_id, r.symbol, r.timeframe, r.status, r.error, r.horizon_bars, r.n_train, r.n_valid, r.n_test,
         r.split, r.weights, r.metrics, r.artifact_path, r.artifact_sha256, r.duration_s, r.walk_forward, r.promotion
  from jsonb_populate_record(null::public.training_results, p_result) as r;

  if p_model_version is not null and jsonb_typeof(p_model_version) = 'object' then
    if v_champion then
      update public.model_versions set is_champion = false
       where symbol = p_model_version ->> 'symbol' and timeframe = p_model_version ->> 'timeframe' and is_champion;
    end if;
    insert into public.model_versions (
      symbol, timeframe, run_id, artifact_path, artifact_sha256, feature_version, weights, metrics,
      trained_at, is_champion, promoted_at)
    select m.symbol, m.timeframe, m.run_id, m.artifact_path, m.artifact_sha256, m.feature_version, m.weights,
           m.metrics, m.trained_at, v_champion, case when v_champion then now() end
    from jsonb_populate_record(null::public.model_versions, p_model_version) as m;
  end if;
end
$$;

revoke execute on function public.record_training_result(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.record_training_result(jsonb, jsonb) to service_role;

-- Retention: delete old non-champion versions of a pair, keeping the newest p_keep; returns what was deleted so the
-- caller can remove the artifact files after the rows are gone (an orphan file is harmless, a dangling row is not).
create or replace function public.prune_model_versions(p_symbol text, p_timeframe text, p_keep integer)
returns setof public.model_versions
language sql
security invoker
set search_path = public
as $$
  delete from public.model_versions
   where symbol = p_symbol and timeframe = p_timeframe and not is_champion
     and id not in (select id from public.model_versions
                     where symbol = p_symbol and timeframe = p_timeframe
                     order by id desc limit greatest(p_keep, 0))
  returning *;
$$;

revoke execute on function public.prune_model_versions(text, text, integer) from public, anon, authenticated;
grant execute on function public.prune_model_versions(text, text, integer) to service_role;

-- Model health for SQL readers: each pair's latest ensemble test balanced accuracy against the mean of its previous
-- five runs, the champion's age, and how many of the last three runs had an ensemble that did not beat the best
-- baseline. `python -m ml.src.monitoring.report` applies the configured margins to the same numbers.
create view public.model_health with (security_invoker = true) as
with scored as (
  select r.symbol, r.timeframe, t.started_at,
         (r.metrics -> 'ensemble' ->> 'test_balanced_accuracy')::double precision as score,
         greatest((r.metrics -> 'baseline' ->> 'test_balanced_accuracy')::double precision,
                  (r.metrics -> 'persistence' ->> 'test_balanced_accuracy')::double precision) as best_baseline,
         row_number() over (partition by r.symbol, r.timeframe order by t.started_at desc, r.id desc) as recency
  from public.training_results r
  join public.training_runs t on t.run_id = r.run_id
  where r.status = 'succeeded'
)
select s.symbol,
       s.timeframe,
       max(s.started_at) filter (where s.recency = 1)                           as latest_at,
       max(s.score) filter (where s.recency = 1)                                as latest_balanced_accuracy,
       avg(s.score) filter (where s.recency between 2 and 6)                    as previous_mean_balanced_accuracy,
       count(*) filter (where s.recency <= 3 and s.score <= s.best_baseline)    as last3_runs_not_beating_baselines,
       count(*)                                                                 as runs,
       (select m.trained_at from public.model_versions m
         where m.symbol = s.symbol and m.timeframe = s.timeframe and m.is_champion) as champion_trained_at
from scored s
group by s.symbol, s.timeframe;

comment on view public.model_health is
  'Per pair: latest vs previous-runs balanced accuracy, champion age, runs not beating baselines (see monitoring report).';

revoke all on table public.model_health from anon, authenticated, service_role;
grant select on table public.model_health to authenticated, service_role;
