-- Verdicts with false-discovery control (issue 19): the views that show the verdict append its q-value.
--
-- metrics.verdict now carries p_value (one-sided, of the paired balanced-accuracy difference it rests on), q_value
-- (Benjamini-Hochberg across the run's succeeded pairs; skill needs q_value <= fdr), fdr and basis. The job writes
-- the q-values back once the run's pairs are done, in one transaction (record_verdicts, migration
-- 20261220000100). The views are those of 20261202004000 unchanged, with columns appended (CREATE OR REPLACE may
-- only append); a row written before issue 19 reads null there.

create or replace view public.latest_models with (security_invoker = true) as
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
  (coalesce(m.metrics -> 'majority', m.metrics -> 'baseline') ->> 'test_accuracy')::double precision
                                                                           as majority_test_accuracy,
  (m.metrics -> 'persistence' ->> 'test_accuracy')::double precision       as persistence_test_accuracy,
  m.id                                                                     as model_version_id,
  m.promoted_at,
  m.feature_version,
  m.artifact_signature,
  -- appended: like with like
  (coalesce(m.metrics -> 'majority', m.metrics -> 'baseline') ->> 'test_balanced_accuracy')::double precision
                                                                           as majority_test_balanced_accuracy,
  (m.metrics -> 'persistence' ->> 'test_balanced_accuracy')::double precision
                                                                           as persistence_test_balanced_accuracy,
  (m.metrics -> 'ensemble' ->> 'test_log_loss')::double precision          as ensemble_test_log_loss,
  (m.metrics -> 'prior' ->> 'test_log_loss')::double precision             as prior_test_log_loss,
  (m.metrics -> 'ensemble' ->> 'test_ic')::double precision                as ensemble_test_ic,
  (m.metrics -> 'ensemble' ->> 'test_ic_pvalue')::double precision         as ensemble_test_ic_pvalue,
  m.metrics -> 'verdict' ->> 'verdict'                                     as verdict,
  m.metrics -> 'verdict' ->> 'basis'                                       as verdict_basis,
  (r.metrics -> 'trading' -> 'net' ->> 'sharpe')::double precision         as net_sharpe,
  (r.metrics -> 'trading' -> 'confidence' -> 'net' ->> 'sharpe')::double precision
                                                                           as net_sharpe_confident,
  (r.metrics -> 'trading' -> 'buy_and_hold' -> 'net' ->> 'sharpe')::double precision
                                                                           as buy_and_hold_net_sharpe,
  -- appended (issue 19): the verdict's one-sided p-value and its Benjamini-Hochberg q-value across its run
  public.ml_json_number(m.metrics -> 'verdict' -> 'p_value')               as verdict_p_value,
  public.ml_json_number(m.metrics -> 'verdict' -> 'q_value')               as verdict_q_value
from public.model_versions m
left join public.training_results r
  on r.run_id = m.run_id and r.symbol = m.symbol and r.timeframe = m.timeframe
where m.is_champion;

create or replace view public.accuracy_history with (security_invoker = true) as
select
  r.symbol,
  r.timeframe,
  r.run_id,
  t.started_at,
  r.n_test,
  (r.metrics -> 'rf' ->> 'test_accuracy')::double precision                as rf_test_accuracy,
  (r.metrics -> 'gb' ->> 'test_accuracy')::double precision                as gb_test_accuracy,
  (r.metrics -> 'ensemble' ->> 'test_accuracy')::double precision          as ensemble_test_accuracy,
  (r.metrics -> 'ensemble' ->> 'test_balanced_accuracy')::double precision as ensemble_test_balanced_accuracy,
  (coalesce(r.metrics -> 'majority', r.metrics -> 'baseline') ->> 'test_accuracy')::double precision
                                                                           as majority_test_accuracy,
  (r.metrics -> 'persistence' ->> 'test_accuracy')::double precision       as persistence_test_accuracy,
  -- appended
  (coalesce(r.metrics -> 'majority', r.metrics -> 'baseline') ->> 'test_balanced_accuracy')::double precision
                                                                           as majority_test_balanced_accuracy,
  (r.metrics -> 'persistence' ->> 'test_balanced_accuracy')::double precision
                                                                           as persistence_test_balanced_accuracy,
  (r.metrics -> 'ensemble' ->> 'test_log_loss')::double precision          as ensemble_test_log_loss,
  (r.metrics -> 'prior' ->> 'test_log_loss')::double precision             as prior_test_log_loss,
  r.metrics -> 'verdict' ->> 'verdict'                                     as verdict,
  -- appended (issue 19)
  r.metrics -> 'verdict' ->> 'basis'                                       as verdict_basis,
  public.ml_json_number(r.metrics -> 'verdict' -> 'p_value')               as verdict_p_value,
  public.ml_json_number(r.metrics -> 'verdict' -> 'q_value')               as verdict_q_value
from public.training_results r
join public.training_runs t on t.run_id = r.run_id
where r.status = 'succeeded';

-- The monitoring report's rule, unchanged, except that the majority baseline is read under either key; the latest
-- verdict is appended.
create or replace view public.model_health with (security_invoker = true) as
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
      greatest(public.ml_json_number(coalesce(r.metrics -> 'majority', r.metrics -> 'baseline') -> cfg.metric),
               public.ml_json_number(r.metrics -> 'persistence' -> cfg.metric))
    ) as best_baseline,
    r.metrics -> 'verdict' ->> 'verdict' as verdict,
    public.ml_json_number(r.metrics -> 'verdict' -> 'q_value') as verdict_q_value,
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
                       and s.champion_score <= s.best_baseline)      as runs_below_baselines,
    max(s.verdict) filter (where s.recency = 1)                      as latest_verdict,
    max(s.verdict_q_value) filter (where s.recency = 1)              as latest_verdict_q_value
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
             case when j.below_baselines then 'DISABLE' end], null), ','), ''), 'OK') as flag,
  j.latest_verdict,
  j.latest_verdict_q_value                                           -- appended (issue 19)
from judged j;
