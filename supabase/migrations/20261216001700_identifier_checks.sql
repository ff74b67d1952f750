-- Identifiers name files: ML_MODELS_DIR/SYMBOL/TF/..., and the report's pages and chart folders. The database
-- refuses the symbols ml/src/data/identifiers.py refuses (SYMBOL_PATTERN), whoever writes them (the job checks
-- before every write; another tool with the service role did not have to): 1-20 of A-Z 0-9 . = ^ -, the first a
-- letter or digit; so no `/`, `..`, spaces or lower case. Compared in the C collation: byte ranges, whatever the
-- database's locale. The same checks are in the embedded store (ml/src/data/local_db.py, symbol_check, schema
-- version 4). bar_revisions gets the timeframe check the other tables already have.
--
-- NOT VALID: every new or changed row is checked; rows an earlier tool wrote are kept as they are (nothing is
-- deleted by a migration), and the readers check each identifier they read back before it names a file. Once such
-- rows are cleaned, `alter table ... validate constraint ...` makes a constraint cover every row.

alter table public.symbols
  drop constraint symbols_ticker_format,
  add constraint symbols_ticker_format
    check ((ticker collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;

alter table public.ohlc_bars
  add constraint ohlc_bars_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;

alter table public.bar_revisions
  add constraint bar_revisions_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid,
  add constraint bar_revisions_timeframe_check
    check (timeframe in ('m15', 'h1', 'h4', 'd1', 'w1')) not valid;

alter table public.feature_chunks
  add constraint feature_chunks_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;

alter table public.training_results
  add constraint training_results_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;

alter table public.model_versions
  add constraint model_versions_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;

alter table public.ml_forecasts
  add constraint ml_forecasts_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$') not valid;
