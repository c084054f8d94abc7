"""Persistence of estimates, evidence, audit, grants and API tokens (docs/conventions.md §3).

``repository`` holds the protocols the service depends on; ``sqlite`` (the embedded default) and
``postgres`` implement them with plain SQL; ``migrate`` applies the numbered schema files in
``migrations/`` (SQLite) and ``migrations_postgres/``. Nothing here opens a database at import time.
"""
