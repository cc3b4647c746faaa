"""Where a database is: a SQLite file (a path), or a PostgreSQL database (a URL).

The ``db`` setting and the ``--db`` flag of ``serve`` and ``token`` take either. Nothing
here opens anything; :mod:`agentcom.store.open` does.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["POSTGRES_SCHEMES", "hide_password", "is_postgres_url", "shown"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""How a PostgreSQL URL starts (libpq's two spellings)."""

# The password of a URL's user part: scheme://user:PASSWORD@host...
_URL_PASSWORD = re.compile(r"(://[^/:@]*):[^/@]*@")
# A password given as a parameter: ...?password=PASSWORD&...
_PARAMETER_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def is_postgres_url(db: Path | str) -> bool:
    """Whether ``db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.lower().startswith(POSTGRES_SCHEMES)


def hide_password(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``****``."""
    text = _URL_PASSWORD.sub(r"\1:****@", text)
    return _PARAMETER_PASSWORD.sub(r"\1****", text)


def shown(db: Path | str) -> str:
    """``db`` as messages and logs show it: a path as given, a URL without its password."""
    return hide_password(str(db)) if is_postgres_url(db) else str(db)
