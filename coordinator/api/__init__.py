"""The HTTP API: FastAPI routers, request/response models and the in-process server.

- :mod:`~coordinator.api.app`: ``create_api(backend, settings)`` assembles the app.
- :mod:`~coordinator.api.backend`: the :class:`SagaBackend` protocol the routes depend on.
- :mod:`~coordinator.api.routes`: module-level routers (``sagas``, ``health``).
- :mod:`~coordinator.api.dependencies`, :mod:`~coordinator.api.auth`: the backend, the
  settings and the bearer-token check, as FastAPI dependencies.
- :mod:`~coordinator.api.errors`: every error answer is a JSON ``ErrorResponse``.
- :mod:`~coordinator.api.models`: request and response bodies.
- :mod:`~coordinator.api.server`: uvicorn inside the coordinator's event loop.

Nothing is re-exported here, so that ``python -m coordinator.api.app`` runs its module fresh.
"""
