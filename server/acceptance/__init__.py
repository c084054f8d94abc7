"""Acceptance cases of docs/pricing-rules.md §17/§18 as data (``cases/*.json``) and their loader."""
