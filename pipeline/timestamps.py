"""UTC timestamps, one place for their formats.

    >>> now_iso()        # '2026-11-30T04:00:00.123456Z'  metadata, failure records, events
    >>> now_iso(False)   # '2026-11-30T04:00:00Z'         combo_mappings.csv (the original's format)
    >>> stamp()          # '20261130T040000Z'             in file names (superseded files, run ids)
"""
from datetime import datetime, timezone


def now_iso(micro=True) -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
