-- The champions' forecasts (python -m ml.src.inference.forecast_job) and their live record.
--
-- One row per (symbol, timeframe, bar_ts, model_version_id): a re-run of the forecast step writes nothing new. The
-- realised_* columns are filled once the bar h bars after bar_ts is in ohlc_bars (by the next forecast or training
-- run), with the label judged by the thresholds the model was trained with (threshold_lower/upper).
-- Same table and columns in the embedded SQLite store (ml/src/data/local_db.py, FORECAST_SCHEMA).
--
-- No foreign key to model_versions: retention deletes old versions, and their forecasts are the live record, which
-- must outlive them. model_sha256 / model_run_id identify the artifact that made the forecast.

create table public.ml_forecasts (
  id                bigint generated always as identity primary key,
  symbol            text not null,
  timeframe         text not null,
  bar_ts            timestamptz not null,          -- the closed bar the forecast is made at (its opening instant)
  horizon_bars      integer not null,
  target_ts         timestamptz not null,          -- opening instant of the bar h bars later, in trading time
  p_bearish         double precision not null,
  p_neutral         double precision not null,
  p_bullish         double precision not null,
  label             text not null,
  direction_score   double precision not null,     -- p_bullish - p_bearish
  model_version_id  bigint not null,
  model_trained_at  timestamptz not null,
  model_run_id      uuid,
  model_sha256      text,
  bar_close         double precision,
  threshold_lower   double precision,
  threshold_upper   double precision,
  persistence_label text,                          -- label of the h bars up to bar_ts: the live baseline
  created_at        timestamptz not null default now(),
  realised_bar_ts   timestamptz,
  realised_close    double precision,
  realised_return   double precision,
  realised_label    text,
  realised_at       timestamptz,
  constraint ml_forecasts_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint ml_forecasts_horizon_check check (horizon_bars > 0),
  constraint ml_forecasts_probabilities_check check (
    p_bearish between 0 and 1 and p_neutral between 0 and 1 and p_bullish between 0 and 1
    and abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
  constraint ml_forecasts_label_check check (label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_forecasts_direction_check check (direction_score between -1 and 1),
  constraint ml_forecasts_persistence_label_check
    check (persistence_label is null or persistence_label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_forecasts_realised_label_check
    check (realised_label is null or realised_label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_forecasts_model_sha256_check check (model_sha256 is null or model_sha256 ~ '^[0-9a-f]{64}$'),
  constraint ml_forecasts_once_per_model_key unique (symbol, timeframe, bar_ts, model_version_id)
);
comment on table public.ml_forecasts is
  'Forecasts of each pair''s champion at its latest closed bar, and (once known) what happened.';
-- The outcome filler's read: a pair's forecasts still waiting for their horizon.
create index ml_forecasts_unrealised_idx on public.ml_forecasts (symbol, timeframe, bar_ts)
  where realised_return is null;

-- ---- access: authenticated may read, only the service role writes (as in 20261121000200_rls.sql) -----------------
alter table public.ml_forecasts enable row level security;
revoke all on table public.ml_forecasts from anon, authenticated;
grant select on table public.ml_forecasts to authenticated;
grant all on table public.ml_forecasts to service_role;
revoke all on sequence public.ml_forecasts_id_seq from anon, authenticated;
grant all on sequence public.ml_forecasts_id_seq to service_role;
create policy ml_forecasts_read on public.ml_forecasts
  for select to authenticated using (true);

-- ---- views (security_invoker: the caller's privileges and RLS apply) ---------------------------------------------

-- The newest forecast per pair: the latest bar, and for that bar the most recently trained model.
create view public.latest_forecasts with (security_invoker = true) as
select distinct on (f.symbol, f.timeframe)
  f.symbol, f.timeframe, f.bar_ts, f.target_ts, f.horizon_bars, f.label,
  f.p_bearish, f.p_neutral, f.p_bullish, f.direction_score,
  f.model_version_id, f.model_trained_at, f.created_at,
  exists (select 1 from public.model_versions m
           where m.id = f.model_version_id and m.symbol = f.symbol and m.timeframe = f.timeframe
             and m.is_champion) as by_current_champion
from public.ml_forecasts f
order by f.symbol, f.timeframe, f.bar_ts desc, f.model_trained_at desc, f.id desc;

comment on view public.latest_forecasts is 'Newest forecast per (symbol, timeframe).';

-- The live record per pair, over realised forecasts (one per bar: the most recently trained model's), beside the
-- baselines measured on the same rows and the champion's own validation/test scores:
--   hit_rate          share of directional calls (BULLISH/BEARISH) that were right, on rows that really moved
--                     (realised label not NEUTRAL);
--   balanced_accuracy mean recall over the realised classes present; chance_balanced_accuracy = 1 / their number
--                     (what the majority-class baseline scores);
--   ic                Spearman rank correlation of direction_score with realised_return (average ranks for ties;
--                     null below 3 rows or when either side is constant);
--   persistence_*     the label of the h bars up to bar_ts, scored like the model.
-- ml/src/inference/live_record.py computes the same numbers for the embedded store and the monitoring report.
create view public.forecast_performance with (security_invoker = true) as
with one_per_bar as (
  select distinct on (f.symbol, f.timeframe, f.bar_ts) f.*
  from public.ml_forecasts f
  order by f.symbol, f.timeframe, f.bar_ts, f.model_trained_at desc, f.id desc
),
counts as (
  select symbol, timeframe,
         count(*)                                      as n_forecasts,
         count(*) filter (where realised_return is not null) as n_realised,
         min(bar_ts)                                   as first_bar_ts,
         max(bar_ts)                                   as last_bar_ts
  from one_per_bar
  group by symbol, timeframe
),
realised as (
  select o.*,
         rank() over (partition by symbol, timeframe order by direction_score)
           + (count(*) over (partition by symbol, timeframe, direction_score) - 1) / 2.0 as score_rank,
         rank() over (partition by symbol, timeframe order by realised_return)
           + (count(*) over (partition by symbol, timeframe, realised_return) - 1) / 2.0 as return_rank
  from one_per_bar o
  where o.realised_return is not null and o.realised_label is not null
),
per_class as (
  select symbol, timeframe, realised_label,
         avg((label = realised_label)::int)::double precision                                   as recall,
         avg((coalesce(persistence_label = realised_label, false))::int)::double precision      as persistence_recall
  from realised
  group by symbol, timeframe, realised_label
),
balanced as (
  select symbol, timeframe, avg(recall) as balanced_accuracy, avg(persistence_recall) as persistence_balanced_accuracy,
         count(*) as n_classes
  from per_class
  group by symbol, timeframe
),
scored as (
  select symbol, timeframe,
         avg((label = realised_label)::int)::double precision                                   as accuracy,
         avg((coalesce(persistence_label = realised_label, false))::int)::double precision      as persistence_accuracy,
         count(*) filter (where label <> 'NEUTRAL' and realised_label <> 'NEUTRAL')             as n_directional,
         avg((label = realised_label)::int) filter (where label <> 'NEUTRAL' and realised_label <> 'NEUTRAL')
           ::double precision                                                                   as hit_rate,
         case when count(*) >= 3 then corr(score_rank, return_rank) end                         as ic
  from realised
  group by symbol, timeframe
)
select c.symbol, c.timeframe, c.n_forecasts, c.n_realised, s.n_directional,
       s.hit_rate, s.accuracy, b.balanced_accuracy, s.ic,
       s.persistence_accuracy, b.persistence_balanced_accuracy,
       1.0::double precision / nullif(b.n_classes, 0)                                         as chance_balanced_accuracy,
       c.first_bar_ts, c.last_bar_ts,
       m.id                                                                                   as champion_version_id,
       (m.metrics -> 'ensemble' ->> 'valid_balanced_accuracy')::double precision              as champion_valid_balanced_accuracy,
       (m.metrics -> 'ensemble' ->> 'test_balanced_accuracy')::double precision               as champion_test_balanced_accuracy
from counts c
left join scored s   on s.symbol = c.symbol and s.timeframe = c.timeframe
left join balanced b on b.symbol = c.symbol and b.timeframe = c.timeframe
left join public.model_versions m on m.symbol = c.symbol and m.timeframe = c.timeframe and m.is_champion;

comment on view public.forecast_performance is
  'Per pair: live hit rate, balanced accuracy and IC of realised forecasts with counts, baselines on the same rows, '
  'and the champion''s validation/test balanced accuracy.';

revoke all on table public.latest_forecasts, public.forecast_performance from anon, authenticated, service_role;
grant select on table public.latest_forecasts, public.forecast_performance to authenticated, service_role;
