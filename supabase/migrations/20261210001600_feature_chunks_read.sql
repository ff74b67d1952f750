-- The job's cache read as raw bytes: feature_chunks_get (20261202001000) sends the chunks as base64 inside JSON,
-- which Postgres spends most of the call escaping and the client parsing and decoding again (measured: ~50 ms of
-- server time for a 1,300-row window, 5 ms to concatenate the same bytes). Called through PostgREST with
-- `Accept: application/octet-stream`, a bytea result travels as is (ml/src/data/supabase_db.py).
--
-- Result: per chunk, in chunk_start order, big-endian headers then the stored arrays unchanged:
--   int8 chunk_start (microseconds since 1970-01-01 UTC) | int4 n_rows | int4 L | L bytes: the column names joined
--   by ',' (UTF-8) | ts_data (n_rows x int8 LE) | values_data (n_rows x n_columns x float8 LE)
-- One call per pair and a scalar result: PostgREST's row cap does not apply.
--
-- PostgREST (12+) serves a function's result under a media type when its return type is a domain named after it.
create domain public."application/octet-stream" as bytea;

create function public.feature_chunks_read(
  p_symbol       text,
  p_timeframe    text,
  p_version      text,
  p_start        timestamptz,
  p_end          timestamptz,
  p_chunk_starts timestamptz[] default null
) returns public."application/octet-stream"
language sql
stable
security invoker
set search_path = public, pg_temp
as $$
  select coalesce(string_agg(
           int8send((extract(epoch from c.chunk_start) * 1000000)::bigint)
           || int4send(c.n_rows)
           || int4send(octet_length(convert_to(array_to_string(c.columns, ','), 'UTF8')))
           || convert_to(array_to_string(c.columns, ','), 'UTF8')
           || c.ts_data
           || c.values_data,
           ''::bytea order by c.chunk_start), ''::bytea)::public."application/octet-stream"
    from public.feature_chunks c
   where c.symbol = p_symbol and c.timeframe = p_timeframe and c.feature_version = p_version
     and (case when p_chunk_starts is null
               then c.chunk_start <= p_end and c.last_ts >= p_start
               else c.chunk_start = any (p_chunk_starts) end);
$$;

revoke all on function public.feature_chunks_read(text, text, text, timestamptz, timestamptz, timestamptz[])
  from public, anon, authenticated;
grant execute on function public.feature_chunks_read(text, text, text, timestamptz, timestamptz, timestamptz[])
  to service_role;
