-- Views a quant can trust: latest_models shows each pair's champion (the model load_champion serves) with the model's
-- own training time, and model_health carries the RETRAIN / DISABLE flags by exactly the monitoring report's rule.
--
-- One definition of the thresholds: the single row of monitoring_settings. Every training run publishes the
-- thresholds it is configured with there (ML_PROMOTION_METRIC, ML_MONITOR_RETRAIN_DROP, ML_MONITOR_DISABLE_RUNS,
-- ML_MONITOR_HISTORY_RUNS and each timeframe's max_model_age_days); the model_health view and
-- `python -m ml.src.monitoring.report` both read them from this row, so the SQL flag and the report cannot disagree
-- even when the report runs from a shell with other settings. The defaults below are the job's defaults.

create table public.monitoring_settings (
  id                 smallint primary key default 1,
  metric             text not null default 'test_balanced_accuracy',
  retrain_drop       double precision not null default 0.05,
  disable_runs       integer not null default 3,
  history_runs       integer not null default 5,
  max_model_age_days jsonb not null default '{"m15": 3, "h1": 7, "h4": 10, "d1": 14, "w1": 45}',
  updated_at         timestamptz not null default now(),
  updated_by         text,                   -- the run that published them
  constraint monitoring_settings_single_row check (id = 1),
  constraint monitoring_settings_metric_check
    check (metric in ('test_balanced_accuracy', 'test_accuracy', 'test_macro_f1')),
  constraint monitoring_settings_values_check check (retrain_drop >= 0 and disable_runs >= 1 and history_runs >= 1)
);
comment on table public.monitoring_settings is
  'The monitoring thresholds (one row), published by each training run; read by model_health and the report.';
insert into public.monitoring_settings (id) values (1);

alter table public.monitoring_settings enable row level security;
revoke all on table public.monitoring_settings from anon, authenticated;
grant select on table public.monitoring_settings to authenticated;
grant all on table public.monitoring_settings to service_role;
create policy monitoring_settings_read on public.monitoring_settings for select to authenticated using (true);

-- A JSON number as double precision; anything else (string, null, missing, object) is null.
create function public.ml_json_number(p_value jsonb)
returns double precision
language sql
immutable
set search_path = public, pg_temp
as $$
  select case when jsonb_typeof(p_value) = 'number' then (p_value #>> '{}')::double precision end;
$$;
-- explicit, so the result does not depend on the database's default privileges (the view's readers call it)
revoke all on function public.ml_json_number(jsonb) from public, anon, authenticated;
grant execute on function public.ml_json_number(jsonb) to authenticated, service_role;

-- ---- latest_models: the champions ---------------------------------------------------------------------------------------

drop view public.latest_models;
create view public.latest_models with (security_invoker = true) as
select
  m.symbol,
  m.timeframe,
  m.run_id,
  m.trained_at,                                                                   -- the model's own training time
  m.artifact_path,                                                                -- relative to ML_MODELS_DIR
  m.artifact_sha256,
  r.n_train,
  r.n_test,
  m.weights,
  (m.metrics -> 'ensemble' ->> 'test_accuracy')::double precision          as ensemble_test_accuracy,
  (m.metrics -> 'ensemble' ->> 'test_balanced_accuracy')::double precision as ensemble_test_balanced_accuracy,
  (m.metrics -> 'baseline' ->> 'test_accuracy')::double precision          as majority_test_accuracy,
  (m.metrics -> 'persistence' ->> 'test_accuracy')::double precision       as persistence_test_accuracy,
  m.id                                                                     as model_version_id,
  m.promoted_at,
  m.feature_version,
  m.artifact_signature
from public.model_versions m
left join public.training_results r
  on r.run_id = m.run_id and r.symbol = m.symbol and r.timeframe = m.timeframe
where m.is_champion;

comment on view public.latest_models is
  'Each pair''s champion model version (what load_champion serves), trained_at = the model''s training time.';

-- ---- model_health: the report's rule ------------------------------------------------------------------------------------
-- Per pair with succeeded results (ordered by run start, then result id; "latest" is the newest):
--   score           = metrics.ensemble.<metric> of a result
--   champion score  = promotion.champion when the result was a challenger and that is known, else
--                     promotion.challenger, else the score
--   best baseline   = the largest of promotion.baselines, else of metrics.baseline/persistence.<metric>
--   RETRAIN  when latest score < mean(score of the history_runs results before it) - retrain_drop,
--            or the pair has no champion, or the champion is older than max_model_age_days[timeframe]
--   DISABLE  when there are at least disable_runs results and in each of the last disable_runs the champion
--            score <= the best baseline
drop view public.model_health;
create view public.model_health with (security_invoker = true) as
with cfg as (
  select * from public.monitoring_settings where id = 1
),
scored as (
  select
    r.symbol,
    r.timeframe,
    t.started_at,
    public.ml_json_number(r.metrics -> 'ensemble' -> cfg.metric) as score,
    case
      when r.promotion ->> 'decision' = 'challenger' and coalesce(jsonb_typeof(r.promotion -> 'champion'), 'null') <> 'null'
        then public.ml_json_number(r.promotion -> 'champion')
      else coalesce(public.ml_json_number(r.promotion -> 'challenger'),
                    public.ml_json_number(r.metrics -> 'ensemble' -> cfg.metric))
    end as champion_score,
    coalesce(
      (select max(public.ml_json_number(b.value))
         from jsonb_each(case when jsonb_typeof(r.promotion -> 'baselines') = 'object'
                              then r.promotion -> 'baselines' else '{}'::jsonb end) as b),
      greatest(public.ml_json_number(r.metrics -> 'baseline' -> cfg.metric),
               public.ml_json_number(r.metrics -> 'persistence' -> cfg.metric))
    ) as best_baseline,
    row_number() over (partition by r.symbol, r.timeframe order by t.started_at desc, r.id desc) as recency
  from public.training_results r
  join public.training_runs t on t.run_id = r.run_id
  cross join cfg
  where r.status = 'succeeded'
),
per_pair as (
  select
    s.symbol,
    s.timeframe,
    count(*)                                                         as runs,
    max(s.started_at) filter (where s.recency = 1)                   as latest_at,
    max(s.score) filter (where s.recency = 1)                        as latest_score,
    avg(s.score) filter (where s.recency between 2 and 1 + cfg.history_runs) as previous_mean_score,
    count(*) filter (where s.recency <= cfg.disable_runs
                       and s.champion_score is not null and s.best_baseline is not null
                       and s.champion_score <= s.best_baseline)      as runs_below_baselines
  from scored s
  cross join cfg
  group by s.symbol, s.timeframe, cfg.history_runs, cfg.disable_runs
),
judged as (
  select
    p.*,
    cfg.metric,
    c.trained_at                                                     as champion_trained_at,
    (c.trained_at is null
      or now() - c.trained_at > (cfg.max_model_age_days ->> p.timeframe)::double precision * interval '1 day')
                                                                     as champion_expired,
    coalesce(p.latest_score < p.previous_mean_score - cfg.retrain_drop, false) as score_dropped,
    (p.runs >= cfg.disable_runs and p.runs_below_baselines = cfg.disable_runs) as below_baselines
  from per_pair p
  cross join cfg
  left join public.model_versions c on c.symbol = p.symbol and c.timeframe = p.timeframe and c.is_champion
)
select
  j.symbol,
  j.timeframe,
  j.metric,
  j.runs,
  j.latest_at,
  j.latest_score,
  j.previous_mean_score,
  j.runs_below_baselines,
  j.champion_trained_at,
  j.champion_expired,
  array_remove(array[case when j.score_dropped or j.champion_expired then 'RETRAIN' end,
                     case when j.below_baselines then 'DISABLE' end], null)  as flags,
  coalesce(nullif(array_to_string(array_remove(array[
             case when j.score_dropped or j.champion_expired then 'RETRAIN' end,
             case when j.below_baselines then 'DISABLE' end], null), ','), ''), 'OK') as flag
from judged j;

comment on view public.model_health is
  'Per pair: latest vs previous runs, champion age, runs below baselines, and the RETRAIN/DISABLE flags of the '
  'monitoring report (thresholds from monitoring_settings).';

revoke all on table public.latest_models, public.model_health from anon, authenticated, service_role;
grant select on table public.latest_models, public.model_health to authenticated, service_role;
