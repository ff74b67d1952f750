"""Forecasts from the champions (forecast_job), their closed-bar clock, realised outcomes and live record."""
