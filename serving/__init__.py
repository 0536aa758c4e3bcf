"""ONNX Runtime server for export folders (issue: serving). Never imports torch on the classification path."""
