-- Leases of runs that can no longer use them are free before their TTL ends (issue 21, cases 5 and "a crashed run
-- blocks its pairs"):
--   * a lease whose run already has a final status (anything but 'running' in training_runs): the run ended but its
--     release never landed (the database was down at the end of the run), so nobody will ever renew it;
--   * a lease held by one of p_reclaim: holders the caller proved dead (same host, process gone; see
--     ml/src/training/leases.py). The caller passes only holders whose lease it was refused, one at a time.
-- taken_over entries now carry "reason": 'expired', 'finished' or 'holder gone'; the caller marks still-running runs
-- of 'expired' and 'holder gone' leases abandoned. Everything else is as in 20261121000400_leases.sql.

drop function public.acquire_leases(text[], text, integer, uuid);

create function public.acquire_leases(
  p_names       text[],
  p_holder      text,
  p_ttl_seconds integer,
  p_run_id      uuid default null,
  p_reclaim     text[] default null
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
  v_reason     text;
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
      select * into v_prev from public.job_leases where name = v_name for update;
      if found then
        v_reason := null;
        if v_prev.holder <> p_holder then
          if v_prev.expires_at <= v_now then
            v_reason := 'expired';
          elsif exists (select 1 from public.training_runs r
                         where r.run_id = v_prev.run_id and r.status <> 'running') then
            v_reason := 'finished';
          elsif v_prev.holder = any (coalesce(p_reclaim, '{}'::text[])) then
            v_reason := 'holder gone';
          else
            v_conflict := v_prev;
            raise exception 'lease % is held by %', v_name, v_prev.holder using errcode = 'SBL01';
          end if;
        end if;
        update public.job_leases
           set holder      = p_holder,
               run_id      = case when v_prev.holder = p_holder then coalesce(p_run_id, v_prev.run_id)
                                  else p_run_id end,
               acquired_at = case when v_prev.holder = p_holder and v_prev.expires_at > v_now
                                  then v_prev.acquired_at else v_now end,
               expires_at  = v_expires_at
         where name = v_name;
        if v_reason is not null then
          v_taken_over := v_taken_over || jsonb_build_array(jsonb_build_object(
            'name', v_name, 'holder', v_prev.holder, 'run_id', v_prev.run_id, 'expired_at', v_prev.expires_at,
            'reason', v_reason));
        end if;
      else
        insert into public.job_leases (name, holder, run_id, acquired_at, expires_at)
        values (v_name, p_holder, p_run_id, v_now, v_expires_at)
        on conflict (name) do nothing;
        if not found then
          -- A concurrent caller inserted the row after our SELECT and holds it.
          select * into v_conflict from public.job_leases where name = v_name;
          raise exception 'lease % is held by %', v_name, v_conflict.holder using errcode = 'SBL01';
        end if;
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

comment on function public.acquire_leases(text[], text, integer, uuid, text[]) is
  'Take all named leases for p_holder for p_ttl_seconds, or none; a lease is free when absent, expired, held by '
  'p_holder, held for a run with a final status, or held by one of p_reclaim. See 20261215000100_lease_takeover.sql.';

revoke all on function public.acquire_leases(text[], text, integer, uuid, text[]) from public, anon, authenticated;
grant execute on function public.acquire_leases(text[], text, integer, uuid, text[]) to service_role;
