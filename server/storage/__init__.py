"""Persistence of estimates, idempotency records and API tokens (STYLE.md §2.3).

``repository`` holds the protocols the service depends on; ``sqlite`` implements them;
``migrate`` applies the numbered schema files in ``migrations/``. Nothing here opens a
database at import time.
"""
