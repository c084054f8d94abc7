"""KIS Estimator: the one import namespace of the ``kis-estimator`` distribution.

The wheel installs a single top-level package, so it never collides with another distribution's
``server`` or ``workflows`` in the same virtualenv:

- ``kis_estimator.server`` — the gRPC estimator service (``kis-estimator``), the pricing engine,
  storage, evidence bundles;
- ``kis_estimator.workflows`` — the release and incident workflows (``kis-release``);
- ``kis_estimator.client`` — the typed Python client of the API (generated stubs and messages).

In the repository the service and the workflows keep their top-level folders (``server/``,
``workflows/``); ``kis_estimator/server`` and ``kis_estimator/workflows`` are relative symbolic links
to them, so one source tree is imported under one name in the checkout, the editable install and the
wheel alike.
"""
