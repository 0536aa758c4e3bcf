"""ONNX export, graph optimisation, quantisation and parity checks of merged AdaMix models (issue: export)."""
