-- The replay tables name pairs too: the same identifier check as every other symbol column
-- (20261216001700_identifier_checks.sql), so both stores refuse the same rows (tests/test_schema_parity.py).
-- The tables are new, so the checks cover every row at once.

alter table public.ml_replay_pairs
  add constraint ml_replay_pairs_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$');

alter table public.ml_replay_forecasts
  add constraint ml_replay_forecasts_symbol_format
    check ((symbol collate "C") ~ '^[A-Z0-9][A-Z0-9.=^-]{0,19}$');
