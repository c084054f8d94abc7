"""Prometheus: the one HTTP client and every PromQL expression the workflows read."""
