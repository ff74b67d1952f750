from __future__ import annotations

pytest_plugins = ["tests.plugins.supabase_stack"]
