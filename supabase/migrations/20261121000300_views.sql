-- Read-only reporting views over the run ledger.
--
-- security_invoker = true: the view runs with the CALLER's privileges and RLS (PostgreSQL 15+). Without it a view
-- runs as its owner (postgres), which bypasses RLS and would expose the ML tables to anyone allowed to read the view.
-- Metric values come from training_results.metrics (written by the Python job):
--   metrics->'ensemble'->>'test_accuracy', ->'ensemble'->>'test_balanced_accuracy', ->'rf'->>'test_accuracy',
--   ->'gb'->>'test_accuracy', ->'baseline'->>'test_accuracy' (majority class of train),
--   ->'persistence'->>'test_accuracy'.  A missing key or JSON null gives SQL null.

-- The newest succeeded result per (symbol, timeframe): newest run first (run started_at), then newest result row.
create view public.latest_models with (security_invoker = true) as
select distinct on (r.symbol, r.timeframe)
  r.symbol,
  r.timeframe,
  r.run_id,
  t.started_at                                                          as trained_at,
  r.artifact_path,
  r.artifact_sha256,
  r.n_train,
  r.n_test,
  r.weights,
  (r.metrics -> 'ensemble' ->> 'test_accuracy')::double precision          as ensemble_test_accuracy,
  (r.metrics -> 'ensemble' ->> 'test_balanced_accuracy')::double precision as ensemble_test_balanced_accuracy,
  (r.metrics -> 'baseline' ->> 'test_accuracy')::double precision          as majority_test_accuracy,
  (r.metrics -> 'persistence' ->> 'test_accuracy')::double precision       as persistence_test_accuracy
from public.training_results r
join public.training_runs t on t.run_id = r.run_id
where r.status = 'succeeded'
order by r.symbol, r.timeframe, t.started_at desc, r.created_at desc, r.id desc;

comment on view public.latest_models is
  'Newest succeeded training result per (symbol, timeframe), with its test accuracies; trained_at = run started_at.';

-- Every succeeded result, for accuracy-over-time charts. No ORDER BY: callers order (e.g. by started_at).
create view public.accuracy_history with (security_invoker = true) as
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
  (r.metrics -> 'baseline' ->> 'test_accuracy')::double precision          as majority_test_accuracy,
  (r.metrics -> 'persistence' ->> 'test_accuracy')::double precision       as persistence_test_accuracy
from public.training_results r
join public.training_runs t on t.run_id = r.run_id
where r.status = 'succeeded';

comment on view public.accuracy_history is 'One row per succeeded training result with its test accuracies.';

-- Not for anon (the underlying tables are not readable by anon anyway; this makes the refusal explicit).
-- Views are read-only here for everyone except the owner.
revoke all on table public.latest_models, public.accuracy_history from anon, authenticated, service_role;
grant select on table public.latest_models, public.accuracy_history to authenticated, service_role;
