"""The HTTP layer: the FastAPI app (`app`), its middleware (body limit and metrics), API keys (`api_keys`,
`auth`), error answers (`error_handlers`), server-sent events (`sse`), the OpenAPI schema (`openapi`), the
probes (`probes`), what every API shares (`schemas`, `model_lookup`) and the uvicorn server (`server`)."""
