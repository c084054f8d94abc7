"""Acceptance cases of DOMAIN.md §17/§18 as data (``cases/*.json``) and their loader (``cases.py``)."""
