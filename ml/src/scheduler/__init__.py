"""The nightly training schedule: APScheduler cron jobs that run the ensemble training job in-process.

    python -m ml.src.scheduler                   # run for ever (SIGTERM / Ctrl-C: finish the pair, stop)
    python -m ml.src.scheduler --print-schedule  # the jobs and their next fire times; needs no store
    python -m ml.src.scheduler --once            # run every group now, one after another

Two jobs, both in UTC, from the settings' cron strings:

* `train-daily` (ML_SCHEDULE_DAILY_CRON, default `30 22 * * mon-fri`): the intraday and daily timeframes after
  the US close on trading weekdays; with ML_SCHEDULE_SKIP_HOLIDAYS it does not fire on NYSE full-day holidays.
* `train-weekly` (ML_SCHEDULE_WEEKLY_CRON, default `0 14 * * sat`): the weekly timeframes once a week.

A fire more than ML_SCHEDULE_MISFIRE_GRACE_HOURS late (the host was asleep, or the previous run was still going)
does not run; it is recorded in the run ledger as a 'skipped' scheduled run, and a job that raises is recorded
as 'failed'. Runs themselves are recorded by the training job. The jobs share one worker thread, so they never
train side by side.

Modules: jobs (the groups and their triggers), ledger (missed / failed fires as ledger rows), service (the
APScheduler process and `--once`), cli (flags), market_calendar (NYSE holidays).
"""
