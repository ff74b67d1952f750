-- The embedded store's schema (SQLite), the twin of supabase/migrations/ for the tables both stores have.
-- tests/test_schema_parity.py compares the two on the local stack: same tables, columns, nullability and checks.
-- Applied at every open (create ... if not exists); changes an existing file cannot take go into
-- local_db._upgrade with a SCHEMA_VERSION bump. `@table.column` stands for that column's identifier check
-- (local_db.symbol_check: SQLite has no regexp), filled in by local_db.fill_schema.

create table if not exists symbols (
    ticker text primary key @symbols.ticker,
    active integer not null default 1,
    created_at text not null
);
create table if not exists ohlc_bars (
    symbol text not null @ohlc_bars.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    ts text not null,
    open real not null, high real not null, low real not null, close real not null,
    volume real not null check (volume >= 0),
    primary key (symbol, timeframe, ts)
) without rowid;
create table if not exists bar_revisions (
    symbol text not null @bar_revisions.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    revision integer not null default 1,
    changed_from text,
    changed_at text not null,
    primary key (symbol, timeframe)
) without rowid;
create table if not exists feature_chunks (
    symbol text not null @feature_chunks.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    feature_version text not null,
    chunk_start text not null,
    first_ts text not null,
    last_ts text not null,
    n_rows integer not null check (n_rows > 0),
    columns text not null,
    ts_data blob not null,
    values_data blob not null,
    computed_at text not null,
    primary key (symbol, timeframe, feature_version, chunk_start)
) without rowid;
create table if not exists training_runs (
    run_id text primary key,
    status text not null check (status in
        ('running','succeeded','partial','failed','interrupted','skipped','abandoned')),
    trigger text not null default 'manual' check (trigger in ('manual','scheduled','api')),
    started_at text not null,
    finished_at text,
    heartbeat_at text,
    host text, pid integer, git_sha text,
    package_versions text, config text, config_hash text, scope text,
    n_pairs integer not null default 0,
    n_succeeded integer not null default 0,
    n_failed integer not null default 0,
    n_skipped integer not null default 0,
    error text,
    warnings text
);
create table if not exists training_results (
    id integer primary key autoincrement,
    run_id text not null references training_runs(run_id) on delete cascade,
    symbol text not null @training_results.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    status text not null check (status in ('succeeded','failed','skipped')),
    error text,
    horizon_bars integer, n_train integer, n_valid integer, n_test integer,
    split text, weights text, metrics text,
    artifact_path text,
    artifact_sha256 text check (artifact_sha256 is null
        or (length(artifact_sha256) = 64 and artifact_sha256 not glob '*[^0-9a-f]*')),
    artifact_signature text check (artifact_signature is null
        or (length(artifact_signature) = 64 and artifact_signature not glob '*[^0-9a-f]*')),
    duration_s real,
    walk_forward text,
    promotion text,
    created_at text not null,
    unique (run_id, symbol, timeframe)
);
create index if not exists training_results_pair on training_results (symbol, timeframe, created_at);
create table if not exists model_versions (
    id integer primary key autoincrement,
    symbol text not null @model_versions.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    run_id text not null references training_runs(run_id) on delete cascade,
    artifact_path text not null,
    artifact_sha256 text not null check (length(artifact_sha256) = 64 and artifact_sha256 not glob '*[^0-9a-f]*'),
    feature_version text not null,
    artifact_signature text check (artifact_signature is null
        or (length(artifact_signature) = 64 and artifact_signature not glob '*[^0-9a-f]*')),
    weights text, metrics text,
    trained_at text not null,
    is_champion integer not null default 0,
    promoted_at text,
    created_at text not null
);
create table if not exists job_leases (
    name text primary key,
    holder text not null,
    run_id text,
    acquired_at text not null,
    expires_at text not null
);
create unique index if not exists model_versions_one_champion on model_versions (symbol, timeframe)
    where is_champion = 1;
create table if not exists monitoring_settings (
    id integer primary key check (id = 1),
    metric text not null check (metric in ('test_balanced_accuracy', 'test_accuracy', 'test_macro_f1')),
    retrain_drop real not null,
    disable_runs integer not null,
    history_runs integer not null,
    max_model_age_days text not null,
    updated_at text not null,
    updated_by text,
    check (retrain_drop >= 0 and disable_runs >= 1 and history_runs >= 1)
);

-- Features follow the bars, whoever writes them (the same rule as the Postgres triggers in
-- supabase/migrations/20261202001000_bar_revisions_feature_chunks.sql): a bar inserted, changed or deleted bumps
-- the pair's revision and drops every cached chunk holding a bar at or after it. Re-writing identical values is
-- not a change. The revision is bumped first, then the chunks go.
create trigger if not exists ohlc_bars_track_inserts after insert on ohlc_bars
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (new.symbol, new.timeframe, 1, new.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = new.symbol and timeframe = new.timeframe and last_ts >= new.ts;
end;
create trigger if not exists ohlc_bars_track_updates after update on ohlc_bars
when old.symbol is not new.symbol or old.timeframe is not new.timeframe or old.ts is not new.ts
    or old.open is not new.open or old.high is not new.high or old.low is not new.low
    or old.close is not new.close or old.volume is not new.volume
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (old.symbol, old.timeframe, 1, old.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (new.symbol, new.timeframe, 1, min(old.ts, new.ts), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = old.symbol and timeframe = old.timeframe and last_ts >= old.ts;
    delete from feature_chunks where symbol = new.symbol and timeframe = new.timeframe
        and last_ts >= min(old.ts, new.ts);
end;
create trigger if not exists ohlc_bars_track_deletes after delete on ohlc_bars
begin
    insert into bar_revisions (symbol, timeframe, revision, changed_from, changed_at)
    values (old.symbol, old.timeframe, 1, old.ts, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    on conflict (symbol, timeframe) do update set revision = revision + 1,
        changed_from = excluded.changed_from, changed_at = excluded.changed_at;
    delete from feature_chunks where symbol = old.symbol and timeframe = old.timeframe and last_ts >= old.ts;
end;

-- The champions' forecasts (same columns as supabase/migrations/20261202003100_forecasts.sql). No foreign key to
-- model_versions: retention deletes old versions, and their forecasts are the live record that must stay.
create table if not exists ml_forecasts (
    id integer primary key autoincrement,
    symbol text not null @ml_forecasts.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    bar_ts text not null,
    horizon_bars integer not null check (horizon_bars > 0),
    target_ts text not null,
    p_bearish real not null,
    p_neutral real not null,
    p_bullish real not null,
    label text not null check (label in ('BEARISH','NEUTRAL','BULLISH')),
    direction_score real not null check (direction_score between -1 and 1),
    model_version_id integer not null,
    model_trained_at text not null,
    model_run_id text,
    model_sha256 text check (model_sha256 is null
        or (length(model_sha256) = 64 and model_sha256 not glob '*[^0-9a-f]*')),
    bar_close real,
    threshold_lower real,
    threshold_upper real,
    persistence_label text check (persistence_label in ('BEARISH','NEUTRAL','BULLISH')),
    created_at text not null,
    realised_bar_ts text,
    realised_close real,
    realised_return real,
    realised_label text check (realised_label in ('BEARISH','NEUTRAL','BULLISH')),
    realised_at text,
    realised_revision integer,
    check (p_bearish between 0 and 1 and p_neutral between 0 and 1 and p_bullish between 0 and 1
        and abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
    unique (symbol, timeframe, bar_ts, model_version_id)
);
create index if not exists ml_forecasts_unrealised on ml_forecasts (symbol, timeframe, bar_ts)
    where realised_return is null;

-- Replays (supabase/migrations/20261216001900_replay_record.sql): what the nightly loop would have told, kept
-- apart from the live record.
create table if not exists ml_replays (
    replay_id text primary key,
    started_at text not null,
    finished_at text,
    status text not null default 'running'
        check (status in ('running','succeeded','failed','interrupted')),
    error text,
    config text not null default '{}',
    scope text not null default '{}'
);
create table if not exists ml_replay_pairs (
    id integer primary key autoincrement,
    replay_id text not null references ml_replays (replay_id) on delete cascade,
    symbol text not null @ml_replay_pairs.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    status text not null check (status in ('succeeded','skipped','failed')),
    error text,
    retrain_every integer,
    horizon_bars integer,
    retrains integer not null default 0,
    promotions integer not null default 0,
    failed_retrains integer not null default 0,
    n_forecasts integer not null default 0,
    n_realised integer not null default 0,
    first_bar_ts text,
    last_bar_ts text,
    record text,
    steps text not null default '[]',
    duration_s real,
    created_at text not null,
    unique (replay_id, symbol, timeframe)
);
create table if not exists ml_replay_forecasts (
    id integer primary key autoincrement,
    replay_id text not null references ml_replays (replay_id) on delete cascade,
    symbol text not null @ml_replay_forecasts.symbol,
    timeframe text not null check (timeframe in ('m15','h1','h4','d1','w1')),
    bar_ts text not null,
    trained_through text not null,
    horizon_bars integer not null,
    p_bearish real not null,
    p_neutral real not null,
    p_bullish real not null,
    label text not null check (label in ('BEARISH','NEUTRAL','BULLISH')),
    direction_score real not null,
    bar_close real,
    threshold_lower real,
    threshold_upper real,
    persistence_label text check (persistence_label in ('BEARISH','NEUTRAL','BULLISH')),
    realised_return real,
    realised_label text check (realised_label in ('BEARISH','NEUTRAL','BULLISH')),
    check (trained_through <= bar_ts),
    check (p_bearish between 0 and 1 and p_neutral between 0 and 1 and p_bullish between 0 and 1
        and abs(p_bearish + p_neutral + p_bullish - 1) < 1e-6),
    unique (replay_id, symbol, timeframe, bar_ts)
);
