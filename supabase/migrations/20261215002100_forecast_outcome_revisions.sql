-- Outcomes follow the bars: the bar revision (bar_revisions.revision) an outcome was computed from.
--
-- ml/src/inference/outcomes.py fills the realised_* columns from ohlc_bars and records the pair's revision, read
-- before the bars. A forecast realised from another revision (a bar inserted, corrected or deleted since) is
-- recomputed on the next fill: its outcome is rewritten if the bars now say otherwise (or cleared when they no
-- longer determine one: the bar is gone or now refused by the bar checks), else only re-stamped. Null: realised
-- before this column existed, or from bars without revisions (a view); recomputed once.
-- Same column in the embedded store (ml/src/data/local_db.py, FORECAST_SCHEMA).

alter table public.ml_forecasts add column realised_revision bigint;
comment on column public.ml_forecasts.realised_revision is
  'bar_revisions.revision of the pair when the realised_* columns were computed; another revision recomputes them.';
