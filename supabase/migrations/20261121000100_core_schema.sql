-- Core schema of SwiftBolt ML Training: market data, feature cache, the run ledger, per-pair results, model versions
-- and job leases.
--
-- Applies to an empty Supabase database (`supabase db push`) and to the local test stack (scripts/local_supabase.sh).
-- Table and column names are shared with the embedded SQLite store: change both together.
-- Access control (RLS, grants) is in 20261121000200_rls.sql; every table created here must be covered there
-- (tests/test_supabase_schema.py checks that RLS is enabled on every table in public).

-- ---- market data -------------------------------------------------------------------------------------------------------

create table public.symbols (
  ticker     text primary key,
  active     boolean not null default true,
  created_at timestamptz not null default now(),
  constraint symbols_ticker_format check (ticker = upper(ticker) and length(ticker) between 1 and 20)
);
comment on table public.symbols is 'Tickers the nightly job trains; active = false keeps history but skips training.';

create table public.ohlc_bars (
  symbol    text not null,
  timeframe text not null,
  ts        timestamptz not null,
  open      double precision not null,
  high      double precision not null,
  low       double precision not null,
  close     double precision not null,
  volume    double precision not null,
  -- The primary-key btree (symbol, timeframe, ts) also serves the training read
  --   where symbol = $1 and timeframe = $2 and ts <= $3 order by ts desc limit $4
  -- as a backward index range scan: no extra index needed.
  constraint ohlc_bars_pkey primary key (symbol, timeframe, ts),
  constraint ohlc_bars_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint ohlc_bars_volume_check check (volume >= 0)
);
-- Deliberately no foreign key to symbols: bars may be loaded (or exposed through a user's own view) for tickers that
-- are not, or not yet, in the training universe.
comment on table public.ohlc_bars is 'OHLCV bars, one row per (symbol, timeframe, bar open time ts).';

-- ---- feature cache ------------------------------------------------------------------------------------------------------

create table public.feature_cache (
  symbol          text not null,
  timeframe       text not null,
  feature_version text not null,
  ts              timestamptz not null,
  -- jsonb, not one column per feature: the feature set is versioned and changes with the code; columns would need a
  -- migration for every feature change, and the cache is only ever read whole per (symbol, timeframe,
  -- feature_version, ts range), never filtered or aggregated by an individual feature.
  features        jsonb not null,
  computed_at     timestamptz not null default now(),
  constraint feature_cache_pkey primary key (symbol, timeframe, feature_version, ts),
  constraint feature_cache_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1'))
);
comment on table public.feature_cache is 'Computed features per bar, keyed by feature_version (see ml/src/features).';

-- ---- run ledger ---------------------------------------------------------------------------------------------------------

create table public.training_runs (
  run_id           uuid primary key default gen_random_uuid(),
  status           text not null,
  trigger          text not null default 'manual',
  started_at       timestamptz not null default now(),
  finished_at      timestamptz,
  heartbeat_at     timestamptz,
  host             text,
  pid              integer,
  git_sha          text,
  package_versions jsonb,
  config           jsonb,
  config_hash      text,
  scope            jsonb,            -- the symbols/timeframes requested for this run
  n_pairs          integer not null default 0,
  n_succeeded      integer not null default 0,
  n_failed         integer not null default 0,
  n_skipped        integer not null default 0,
  error            text,
  constraint training_runs_status_check
    check (status in ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'skipped', 'abandoned')),
  constraint training_runs_trigger_check check (trigger in ('manual', 'scheduled', 'api'))
);
comment on table public.training_runs is
  'One row per training job run (the job ledger); a run left ''running'' by a dead process is marked ''abandoned''.';
create index training_runs_started_at_idx on public.training_runs (started_at desc);
create index training_runs_running_idx on public.training_runs (started_at) where status = 'running';

create table public.training_results (
  id              bigint generated always as identity primary key,
  run_id          uuid not null references public.training_runs (run_id) on delete cascade,
  symbol          text not null,
  timeframe       text not null,
  status          text not null,
  error           text,
  horizon_bars    integer,
  n_train         integer,
  n_valid         integer,
  n_test          integer,
  split           jsonb,
  weights         jsonb,
  metrics         jsonb,
  artifact_path   text,
  artifact_sha256 text,
  duration_s      double precision,
  created_at      timestamptz not null default now(),
  constraint training_results_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint training_results_status_check check (status in ('succeeded', 'failed', 'skipped')),
  constraint training_results_artifact_sha256_check
    check (artifact_sha256 is null or artifact_sha256 ~ '^[0-9a-f]{64}$'),
  -- also serves lookups and the on-delete-cascade by run_id (leading column)
  constraint training_results_run_pair_key unique (run_id, symbol, timeframe)
);
comment on table public.training_results is 'One row per (run, symbol, timeframe) trained, failed or skipped.';
comment on column public.training_results.metrics is
  'Per-model metrics: {"ensemble": {"test_accuracy": .., "test_balanced_accuracy": ..}, "rf": {..}, "gb": {..}, "baseline": {..} (majority class of train), "persistence": {..}}';
create index training_results_pair_created_idx on public.training_results (symbol, timeframe, created_at desc);

create table public.model_versions (
  id              bigint generated always as identity primary key,
  symbol          text not null,
  timeframe       text not null,
  run_id          uuid not null references public.training_runs (run_id) on delete cascade,
  artifact_path   text not null,
  artifact_sha256 text not null,
  feature_version text not null,
  weights         jsonb,
  metrics         jsonb,
  trained_at      timestamptz not null,
  is_champion     boolean not null default false,
  created_at      timestamptz not null default now(),
  constraint model_versions_timeframe_check check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')),
  constraint model_versions_artifact_sha256_check check (artifact_sha256 ~ '^[0-9a-f]{64}$')
);
comment on table public.model_versions is 'Every saved model artifact; at most one champion per (symbol, timeframe).';
-- At most one champion per pair: promoting a new champion must demote the old one in the same transaction.
create unique index model_versions_one_champion_idx on public.model_versions (symbol, timeframe) where is_champion;
create index model_versions_pair_trained_idx on public.model_versions (symbol, timeframe, trained_at desc);
create index model_versions_run_id_idx on public.model_versions (run_id);    -- on-delete-cascade from training_runs

-- ---- job leases ---------------------------------------------------------------------------------------------------------

-- Mutual exclusion between job processes across hosts. Advisory locks cannot be used through PostgREST (each request
-- is its own transaction), so a lease is a row with an expiry, taken/renewed/released only through the functions in
-- 20261121000400_leases.sql. Times are the database clock's, never a client's.
create table public.job_leases (
  name        text primary key,
  holder      text not null,
  run_id      uuid,             -- the holder's training_runs.run_id, if any (no FK: a lease may outlive its run row)
  acquired_at timestamptz not null,
  expires_at  timestamptz not null
);
comment on table public.job_leases is
  'Leases (name -> holder until expires_at); use acquire_leases/renew_leases/release_leases, never write directly.';
