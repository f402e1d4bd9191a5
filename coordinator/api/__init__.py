"""The HTTP API: FastAPI routers, request/response models and the in-process server."""
