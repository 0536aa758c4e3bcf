"""The project's own API: ``GET /v1/models``, ``POST /v1/models/{name}/classify`` and ``.../generate``."""
