-- The replay (python -m ml.src.training.replay): the nightly loop re-run over a pair's last N bars, stored apart
-- from the live record. One ml_replays row per invocation, one ml_replay_pairs row per replayed pair (its record)
-- and one ml_replay_forecasts row per replayed bar. A replay never touches model_versions or ml_forecasts.
-- Same tables and columns in the embedded SQLite store (ml/src/data/local_db.py, REPLAY_SCHEMA).

create table public.ml_replays (
  replay_id   uuid primary key,
  started_at  timestamptz not null,
  finished_at timestamptz,
  status      text not null default 'running',
  error       text,
  config      jsonb not null default '{}'::jsonb,
  scope       jsonb not null default '{}'::jsonb,
  constraint ml_replays_status_check check (status in ('running', 'succeeded', 'failed', 'interrupted'))
);
comment on table public.ml_replays is 'One replay of the nightly loop over history (not the live record).';

create table public.ml_replay_pairs (
  id              bigint generated always as identity primary key,
  replay_id       uuid not null references public.ml_replays (replay_id) on delete cascade,
  symbol          text not null,
  timeframe       text not null,
  status          text not null,
  error           text,
  retrain_every   integer,
  horizon_bars    integer,
  retrains        integer not null default 0,
  promotions      integer not null default 0,
  failed_retrains integer not null default 0,
  n_forecasts     integer not null default 0,
  n_realised      integer not null default 0,
  first_bar_ts    timestamptz,
  last_bar_ts     timestamptz,
  record          jsonb,                          -- replay_record.ReplayScores
  steps           jsonb not null default '[]'::jsonb,  -- one entry per retrain point: promoted / kept / failed
  duration_s      double precision,
  created_at      timestamptz not null default now(),
  constraint ml_replay_pairs_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint ml_replay_pairs_status_check check (status in ('succeeded', 'skipped', 'failed')),
  constraint ml_replay_pairs_once unique (replay_id, symbol, timeframe)
);
comment on table public.ml_replay_pairs is 'Per replayed pair: retrains, promotions and the replay''s record.';

create table public.ml_replay_forecasts (
  id                bigint generated always as identity primary key,
  replay_id         uuid not null references public.ml_replays (replay_id) on delete cascade,
  symbol            text not null,
  timeframe         text not null,
  bar_ts            timestamptz not null,
  trained_through   timestamptz not null,         -- the last bar the forecasting model saw
  horizon_bars      integer not null,
  p_bearish         double precision not null,
  p_neutral         double precision not null,
  p_bullish         double precision not null,
  label             text not null,
  direction_score   double precision not null,
  bar_close         double precision,
  threshold_lower   double precision,
  threshold_upper   double precision,
  persistence_label text,
  realised_return   double precision,
  realised_label    text,
  constraint ml_replay_forecasts_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint ml_replay_forecasts_causal_check check (trained_through <= bar_ts),
  constraint ml_replay_forecasts_probabilities_check check (
    p_bearish between 0 and 1 and p_neutral between 0 and 1 and p_bullish between 0 and 1
    and abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
  constraint ml_replay_forecasts_label_check check (label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_replay_forecasts_persistence_label_check
    check (persistence_label is null or persistence_label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_replay_forecasts_realised_label_check
    check (realised_label is null or realised_label in ('BEARISH', 'NEUTRAL', 'BULLISH')),
  constraint ml_replay_forecasts_once unique (replay_id, symbol, timeframe, bar_ts)
);
comment on table public.ml_replay_forecasts is 'One forecast per replayed bar, with its realised outcome.';

-- ---- access: as ml_forecasts (20261202003100_forecasts.sql): authenticated may read, only the service role writes
alter table public.ml_replays enable row level security;
alter table public.ml_replay_pairs enable row level security;
alter table public.ml_replay_forecasts enable row level security;
revoke all on table public.ml_replays, public.ml_replay_pairs, public.ml_replay_forecasts from anon, authenticated;
grant select on table public.ml_replays, public.ml_replay_pairs, public.ml_replay_forecasts to authenticated;
grant all on table public.ml_replays, public.ml_replay_pairs, public.ml_replay_forecasts to service_role;
revoke all on sequence public.ml_replay_pairs_id_seq, public.ml_replay_forecasts_id_seq from anon, authenticated;
grant all on sequence public.ml_replay_pairs_id_seq, public.ml_replay_forecasts_id_seq to service_role;
create policy ml_replays_read on public.ml_replays for select to authenticated using (true);
create policy ml_replay_pairs_read on public.ml_replay_pairs for select to authenticated using (true);
create policy ml_replay_forecasts_read on public.ml_replay_forecasts for select to authenticated using (true);

-- ---- one pair's replay in one transaction: its row and every forecast, or nothing --------------------------------
-- A retry after a lost reply replaces what the first call wrote (same replay, same pair): never half a pair.
create or replace function public.record_replay_pair(p_pair jsonb, p_forecasts jsonb)
returns void
language plpgsql
security invoker
set search_path = public
as $$
declare
  v_replay uuid := (p_pair ->> 'replay_id')::uuid;
  v_symbol text := p_pair ->> 'symbol';
  v_timeframe text := p_pair ->> 'timeframe';
begin
  delete from public.ml_replay_forecasts
   where replay_id = v_replay and symbol = v_symbol and timeframe = v_timeframe;
  delete from public.ml_replay_pairs
   where replay_id = v_replay and symbol = v_symbol and timeframe = v_timeframe;
  insert into public.ml_replay_pairs (
    replay_id, symbol, timeframe, status, error, retrain_every, horizon_bars, retrains, promotions,
    failed_retrains, n_forecasts, n_realised, first_bar_ts, last_bar_ts, record, steps, duration_s)
  select r.replay_id, r.symbol, r.timeframe, r.status, r.error, r.retrain_every, r.horizon_bars, r.retrains,
         r.promotions, r.failed_retrains, r.n_forecasts, r.n_realised, r.first_bar_ts, r.last_bar_ts, r.record,
         coalesce(r.steps, '[]'::jsonb), r.duration_s
  from jsonb_populate_record(null::public.ml_replay_pairs, p_pair) as r;
  insert into public.ml_replay_forecasts (
    replay_id, symbol, timeframe, bar_ts, trained_through, horizon_bars, p_bearish, p_neutral, p_bullish, label,
    direction_score, bar_close, threshold_lower, threshold_upper, persistence_label, realised_return,
    realised_label)
  select v_replay, v_symbol, v_timeframe, f.bar_ts, f.trained_through, f.horizon_bars, f.p_bearish, f.p_neutral,
         f.p_bullish, f.label, f.direction_score, f.bar_close, f.threshold_lower, f.threshold_upper,
         f.persistence_label, f.realised_return, f.realised_label
  from jsonb_populate_recordset(null::public.ml_replay_forecasts, coalesce(p_forecasts, '[]'::jsonb)) as f;
end
$$;

revoke execute on function public.record_replay_pair(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.record_replay_pair(jsonb, jsonb) to service_role;

-- ---- the replay's record beside the live one (forecast_performance): the same numbers, per replay and pair -------
create view public.replay_performance with (security_invoker = true) as
with realised as (
  select f.*,
         rank() over (partition by replay_id, symbol, timeframe order by direction_score)
           + (count(*) over (partition by replay_id, symbol, timeframe, direction_score) - 1) / 2.0 as score_rank,
         rank() over (partition by replay_id, symbol, timeframe order by realised_return)
           + (count(*) over (partition by replay_id, symbol, timeframe, realised_return) - 1) / 2.0 as return_rank
  from public.ml_replay_forecasts f
  where f.realised_return is not null and f.realised_label is not null
),
per_class as (
  select replay_id, symbol, timeframe, realised_label,
         avg((label = realised_label)::int)::double precision                              as recall,
         avg((coalesce(persistence_label = realised_label, false))::int)::double precision as persistence_recall
  from realised
  group by replay_id, symbol, timeframe, realised_label
),
balanced as (
  select replay_id, symbol, timeframe, avg(recall) as balanced_accuracy,
         avg(persistence_recall) as persistence_balanced_accuracy, count(*) as n_classes
  from per_class
  group by replay_id, symbol, timeframe
),
scored as (
  select replay_id, symbol, timeframe,
         avg((label = realised_label)::int)::double precision                              as accuracy,
         count(*) filter (where label <> 'NEUTRAL' and realised_label <> 'NEUTRAL')        as n_directional,
         avg((label = realised_label)::int) filter (where label <> 'NEUTRAL' and realised_label <> 'NEUTRAL')
           ::double precision                                                              as hit_rate,
         case when count(*) >= 3 then corr(score_rank, return_rank) end                    as ic
  from realised
  group by replay_id, symbol, timeframe
)
select p.replay_id, p.symbol, p.timeframe, r.started_at as replay_started_at, p.status,
       p.retrain_every, p.retrains, p.promotions, p.horizon_bars, p.n_forecasts, p.n_realised, s.n_directional,
       s.hit_rate, s.accuracy, b.balanced_accuracy, s.ic, b.persistence_balanced_accuracy,
       1.0::double precision / nullif(b.n_classes, 0)                                      as chance_balanced_accuracy,
       (p.record ->> 'log_loss')::double precision                                         as log_loss,
       (p.record ->> 'prior_log_loss')::double precision                                   as prior_log_loss,
       (p.record ->> 'ic_p_value')::double precision                                       as ic_p_value,
       (p.record ->> 'net_sharpe')::double precision                                       as net_sharpe,
       (p.record ->> 'buy_and_hold_net_sharpe')::double precision                          as buy_and_hold_net_sharpe,
       p.first_bar_ts, p.last_bar_ts
from public.ml_replay_pairs p
join public.ml_replays r on r.replay_id = p.replay_id
left join scored s   on s.replay_id = p.replay_id and s.symbol = p.symbol and s.timeframe = p.timeframe
left join balanced b on b.replay_id = p.replay_id and b.symbol = p.symbol and b.timeframe = p.timeframe;

comment on view public.replay_performance is
  'Per replay and pair: the replayed hit rate, balanced accuracy and IC over realised forecasts, with the '
  'persistence and chance baselines on the same rows (as forecast_performance for the live record).';

revoke all on table public.replay_performance from anon, authenticated, service_role;
grant select on table public.replay_performance to authenticated, service_role;
