-- The feature cache, readable with SQL: one row per cached bar, the features by name.
--
-- feature_chunks (20261202001000) keeps the cached features as binary arrays, which is what makes the cache cheaper
-- than computing the features, but opaque to a user in the SQL editor. feature_rows() decodes them:
--
--   select ts, features ->> 'rsi_14' as rsi from public.feature_rows('AAPL', 'd1')
--    where ts >= now() - interval '30 days' order by ts;
--
-- One row per cached bar: symbol, timeframe, feature_version, ts, and features = a jsonb object of
-- feature name -> value (float8, exactly the value the job trained or forecast on: the shortest text that reads back
-- as the same double). p_start / p_end / p_version narrow the chunks read (NULL = all). Through PostgREST
-- (`.rpc('feature_rows', ...)`) a call returns at most max_rows rows (1000 on hosted Supabase): page with p_start,
-- or filter and order the result (`.gt('ts', last).order('ts')`).
--
-- SECURITY INVOKER: the caller's grants and RLS on feature_chunks apply (authenticated and service_role read it;
-- anon does not), as for every other read path.

-- The two helpers are plain SQL expressions without SET or STRICT so that the planner inlines them (a call per value
-- would cost ~100x more); they use only pg_catalog functions.

-- An int8 stored little-endian at byte offset p_off (the layout of ts_data and of values_data's bit patterns).
create function public.feature_le_int8(p_data bytea, p_off integer)
returns bigint
language sql
immutable
parallel safe
as $$
  select (get_byte(p_data, p_off)::bigint)
       | (get_byte(p_data, p_off + 1)::bigint << 8)
       | (get_byte(p_data, p_off + 2)::bigint << 16)
       | (get_byte(p_data, p_off + 3)::bigint << 24)
       | (get_byte(p_data, p_off + 4)::bigint << 32)
       | (get_byte(p_data, p_off + 5)::bigint << 40)
       | (get_byte(p_data, p_off + 6)::bigint << 48)
       | (get_byte(p_data, p_off + 7)::bigint << 56);
$$;

-- The IEEE-754 double whose bit pattern is p_bits. Every step is exact in float8 (a 53-bit significand times a power
-- of two), so the value is the stored one bit for bit; the cache holds no NaN or infinity (feature_matrix refuses them).
create function public.feature_float8_from_bits(p_bits bigint)
returns double precision
language sql
immutable
parallel safe
as $$
  select case when p_bits < 0 then -1.0::float8 else 1.0::float8 end
       * case when ((p_bits >> 52) & 2047) = 0
              then (p_bits & 4503599627370495)::float8 * power(2::float8, -1074)   -- zero and subnormals
              else (1.0::float8 + (p_bits & 4503599627370495)::float8 / 4503599627370496.0::float8)
                   * power(2::float8, (((p_bits >> 52) & 2047) - 1023)::float8)
         end;
$$;

create function public.feature_rows(
  p_symbol    text,
  p_timeframe text,
  p_start     timestamptz default null,
  p_end       timestamptz default null,
  p_version   text default null
) returns table (symbol text, timeframe text, feature_version text, ts timestamptz, features jsonb)
language sql
stable
security invoker
set search_path = public, pg_temp
as $$
  with chunk as materialized (  -- the arrays fetched from TOAST once per chunk, not once per get_byte
    select f.feature_version, f.chunk_start, f.n_rows, f.columns, cardinality(f.columns) as k,
           f.ts_data || ''::bytea as ts_data, f.values_data || ''::bytea as values_data
      from public.feature_chunks f
     where f.symbol = p_symbol and f.timeframe = p_timeframe
       and (p_version is null or f.feature_version = p_version)
       and (p_end is null or f.chunk_start <= p_end)
       and (p_start is null or f.last_ts >= p_start)
  ), row_ts as materialized (  -- the rows asked for: one contiguous run of row numbers per chunk (ts ascending)
    select c.feature_version, c.chunk_start, r.i, t.ts
      from chunk c
     cross join generate_series(0, c.n_rows - 1) as r(i)
     cross join lateral (
             select timestamptz '1970-01-01 00:00:00+00'  -- exact: integer microseconds, no float on the way
                      + (public.feature_le_int8(c.ts_data, 8 * r.i)::text || ' microseconds')::interval as ts
           ) as t
     where (p_start is null or t.ts >= p_start) and (p_end is null or t.ts <= p_end)
  ), span as (
    select feature_version, chunk_start, min(i) as lo, max(i) as hi from row_ts group by feature_version, chunk_start
  ), cell as materialized (  -- bits as a column, so that the float expression (naming them 5 times) inlines
    select c.feature_version, c.chunk_start, g / c.k as i, c.columns[g % c.k + 1] as name,
           public.feature_le_int8(c.values_data, 8 * g) as bits
      from span s
      join chunk c using (feature_version, chunk_start)
     cross join generate_series(s.lo * c.k, (s.hi + 1) * c.k - 1) as g
  )
  select p_symbol, p_timeframe, t.feature_version, t.ts, v.features
    from (select feature_version, chunk_start, i,
                 jsonb_object_agg(name, public.feature_float8_from_bits(bits)) as features
            from cell group by feature_version, chunk_start, i) as v
    join row_ts t using (feature_version, chunk_start, i)
   order by t.feature_version, t.ts;
$$;

comment on function public.feature_rows(text, text, timestamptz, timestamptz, text) is
  'Cached features of a pair as rows: symbol, timeframe, feature_version, ts, features (jsonb name -> value).';

revoke all on function public.feature_le_int8(bytea, integer) from public, anon;
revoke all on function public.feature_float8_from_bits(bigint) from public, anon;
revoke all on function public.feature_rows(text, text, timestamptz, timestamptz, text) from public, anon;
grant execute on function public.feature_le_int8(bytea, integer) to authenticated, service_role;
grant execute on function public.feature_float8_from_bits(bigint) to authenticated, service_role;
grant execute on function public.feature_rows(text, text, timestamptz, timestamptz, text)
  to authenticated, service_role;
