"""Which store the settings point at: Supabase when SUPABASE_URL is set, else the embedded SQLite one.

Kept apart from the interface (store.py) so the interface never imports its own implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import StoreSettings
    from ml.src.data.store import TrainingStore


def open_store(settings: StoreSettings) -> TrainingStore:
    """The store the settings point at; implementations are imported only when chosen."""
    if settings.uses_supabase:
        from ml.src.data.supabase_db import SupabaseStore

        return SupabaseStore.from_settings(settings)
    from ml.src.data.local_db import SqliteStore

    return SqliteStore(settings.local_db)
