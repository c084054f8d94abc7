"""Release and incident workflows of KIS Estimator (issues #5, #6).

Workflow code sees three seams, each a ``Protocol`` with one real implementation: the estimator
(gRPC stubs from ``kis_estimator.server.gen``), the issue tracker (Jira via the ``jira`` library, or files)
and the metrics source (Prometheus HTTP API). Nothing else from ``server`` is imported.
"""
