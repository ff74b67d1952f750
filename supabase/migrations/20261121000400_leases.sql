-- Lease functions over public.job_leases, called by the job (service_role) through PostgREST:
--   client.rpc("acquire_leases", {"p_names": [...], "p_holder": h, "p_ttl_seconds": 900, "p_run_id": run_id})
--
-- Semantics (all times are the database clock's now(), i.e. the start of the RPC's transaction; clients never send
-- times, so clock skew between hosts cannot break mutual exclusion):
--   * A lease `name` is FREE for holder h if it has no row, if its row expired (expires_at <= now()), or if h already
--     holds it (re-acquiring extends it and keeps acquired_at).
--   * acquire_leases takes ALL names or NONE. Names are de-duplicated and visited in sorted order and each row is
--     locked before it is written, so concurrent callers lock in the same order and cannot deadlock; a conflict
--     raises inside a sub-block whose rollback undoes the leases already taken in this call.
--     Returns {"acquired": true, "holder", "names", "acquired_at", "expires_at", "taken_over": [{"name", "holder",
--     "run_id", "expired_at"}, ...]} where taken_over lists the expired leases of OTHER holders it took (the caller
--     marks those runs abandoned), or {"acquired": false, "name", "holder", "run_id", "expires_at"} describing the
--     first conflicting lease (in name order). Nothing is written on failure.
--   * renew_leases sets expires_at = now() + ttl on every named lease whose holder is still p_holder, EVEN IF it has
--     expired: expiry only makes a lease available to acquire_leases, ownership changes only there, so a lease
--     nobody took over is still safely ours. Returns how many were renewed; fewer than the number of distinct names
--     means the caller lost a lease (taken over after expiry, or never held) and must stop.
--   * release_leases deletes the named leases held by p_holder (expired or not) and returns how many it deleted;
--     other holders' leases are never touched.
--   * Bad arguments (null/empty names or holder, ttl <= 0) raise SQLSTATE 22023 (invalid_parameter_value).
--
-- SECURITY DEFINER with a pinned search_path (pg_temp last so temporary objects cannot shadow public ones); EXECUTE
-- only for service_role. job_leases is readable by authenticated (RLS policy) but writable only through these
-- functions or by service_role.

create function public.acquire_leases(
  p_names       text[],
  p_holder      text,
  p_ttl_seconds integer,
  p_run_id      uuid default null
) returns jsonb
language plpgsql
volatile
security definer
set search_path = public, pg_temp
as $$
declare
  v_now        timestamptz := now();
  v_expires_at timestamptz;
  v_names      text[];
  v_name       text;
  v_prev       public.job_leases%rowtype;
  v_had_prev   boolean;
  v_conflict   public.job_leases%rowtype;
  v_taken_over jsonb := '[]'::jsonb;
begin
  if p_holder is null or btrim(p_holder) = '' then
    raise exception 'acquire_leases: p_holder must be a non-empty string' using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds <= 0 then
    raise exception 'acquire_leases: p_ttl_seconds must be > 0 (got %)', p_ttl_seconds using errcode = '22023';
  end if;
  if p_names is null or cardinality(p_names) = 0
     or exists (select 1 from unnest(p_names) as u(n) where n is null or btrim(n) = '') then
    raise exception 'acquire_leases: p_names must be a non-empty array of non-empty names' using errcode = '22023';
  end if;

  select array_agg(d.n order by d.n) into v_names from (select distinct n from unnest(p_names) as u(n)) as d;
  v_expires_at := v_now + make_interval(secs => p_ttl_seconds);

  begin  -- sub-block = savepoint: raising 'SBL01' below rolls back every lease taken so far in this call
    foreach v_name in array v_names loop
      -- Lock the current row (if any) and remember its holder, for the conflict check and taken_over.
      select * into v_prev from public.job_leases where name = v_name for update;
      v_had_prev := found;
      if v_had_prev and v_prev.holder <> p_holder and v_prev.expires_at > v_now then
        v_conflict := v_prev;
        raise exception 'lease % is held by %', v_name, v_prev.holder using errcode = 'SBL01';
      end if;

      insert into public.job_leases as l (name, holder, run_id, acquired_at, expires_at)
      values (v_name, p_holder, p_run_id, v_now, v_expires_at)
      on conflict (name) do update
        set holder      = excluded.holder,
            run_id      = case when l.holder = excluded.holder then coalesce(excluded.run_id, l.run_id)
                               else excluded.run_id end,
            acquired_at = case when l.holder = excluded.holder and l.expires_at > v_now then l.acquired_at
                               else excluded.acquired_at end,
            expires_at  = excluded.expires_at
        where l.holder = excluded.holder or l.expires_at <= v_now;
      if not found then
        -- The row did not exist at our SELECT, a concurrent caller inserted it meanwhile and holds it.
        select * into v_conflict from public.job_leases where name = v_name;
        raise exception 'lease % is held by %', v_name, v_conflict.holder using errcode = 'SBL01';
      end if;

      if v_had_prev and v_prev.holder <> p_holder then
        v_taken_over := v_taken_over || jsonb_build_array(jsonb_build_object(
          'name', v_name, 'holder', v_prev.holder, 'run_id', v_prev.run_id, 'expired_at', v_prev.expires_at));
      end if;
    end loop;
  exception when sqlstate 'SBL01' then
    return jsonb_build_object(
      'acquired', false,
      'name', v_conflict.name,
      'holder', v_conflict.holder,
      'run_id', v_conflict.run_id,
      'expires_at', v_conflict.expires_at);
  end;

  return jsonb_build_object(
    'acquired', true,
    'holder', p_holder,
    'names', to_jsonb(v_names),
    'acquired_at', v_now,
    'expires_at', v_expires_at,
    'taken_over', v_taken_over);
end;
$$;

create function public.renew_leases(
  p_names       text[],
  p_holder      text,
  p_ttl_seconds integer
) returns integer
language plpgsql
volatile
security definer
set search_path = public, pg_temp
as $$
declare
  v_count integer;
begin
  if p_holder is null or btrim(p_holder) = '' then
    raise exception 'renew_leases: p_holder must be a non-empty string' using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds <= 0 then
    raise exception 'renew_leases: p_ttl_seconds must be > 0 (got %)', p_ttl_seconds using errcode = '22023';
  end if;
  if p_names is null or cardinality(p_names) = 0 then
    raise exception 'renew_leases: p_names must be a non-empty array' using errcode = '22023';
  end if;

  -- Lock in name order first (same order as acquire_leases) so that a renew never deadlocks with an acquire.
  perform 1 from public.job_leases where name = any (p_names) and holder = p_holder order by name for update;
  update public.job_leases
     set expires_at = now() + make_interval(secs => p_ttl_seconds)
   where name = any (p_names) and holder = p_holder;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;

create function public.release_leases(
  p_names  text[],
  p_holder text
) returns integer
language plpgsql
volatile
security definer
set search_path = public, pg_temp
as $$
declare
  v_count integer;
begin
  if p_holder is null or btrim(p_holder) = '' then
    raise exception 'release_leases: p_holder must be a non-empty string' using errcode = '22023';
  end if;
  if p_names is null or cardinality(p_names) = 0 then
    raise exception 'release_leases: p_names must be a non-empty array' using errcode = '22023';
  end if;

  perform 1 from public.job_leases where name = any (p_names) and holder = p_holder order by name for update;
  delete from public.job_leases where name = any (p_names) and holder = p_holder;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;

comment on function public.acquire_leases(text[], text, integer, uuid) is
  'Take all named leases for p_holder for p_ttl_seconds, or none; see 20261121000400_leases.sql for semantics.';
comment on function public.renew_leases(text[], text, integer) is
  'Extend the named leases still held by p_holder to now() + p_ttl_seconds; returns how many were renewed.';
comment on function public.release_leases(text[], text) is
  'Delete the named leases held by p_holder; returns how many were released.';

-- Functions are executable by PUBLIC by default, and Supabase's default privileges also grant EXECUTE to anon and
-- authenticated: only the job may take, renew or release leases.
revoke all on function public.acquire_leases(text[], text, integer, uuid) from public, anon, authenticated;
revoke all on function public.renew_leases(text[], text, integer)         from public, anon, authenticated;
revoke all on function public.release_leases(text[], text)                from public, anon, authenticated;
grant execute on function public.acquire_leases(text[], text, integer, uuid) to service_role;
grant execute on function public.renew_leases(text[], text, integer)         to service_role;
grant execute on function public.release_leases(text[], text)                to service_role;
