"""The model runtime: an export folder read for serving (`model_folder`), onnxruntime sessions and the numpy
inference loops (`onnx_loops`, which the exporter's parity check runs too), tokenisation (`text`), the
classification batcher (`batching`), the generation engine (`generation`, `sampling`) and `runtime`, where the
limits are enforced for the HTTP routes and the in-process demo alike. No web framework, no torch."""
