"""ONNX Runtime server for export folders (issue: serving). Never imports torch on the classification path.

Grouped by what each part is: `engine` (the model runtime: export folders, onnxruntime sessions and loops,
tokenisation, batching, generation, sampling), `http` (the FastAPI app, middleware, auth, error answers, SSE,
OpenAPI, probes, the uvicorn server), one folder per API with its routes and schemas (`native`, `openai`,
`kserve`, `adapters`), `ray` (``adamix-serve --ray``: Ray Serve), `triton` (``adamix-triton``: a Triton model
repository). Here at the top: what the engine and the HTTP layer share (`errors`, `metrics`) and the command
(`cli`)."""
