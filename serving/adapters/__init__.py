"""Loading and unloading onnxruntime LoRA adapters at run time: ``POST /v1/adapters``, ``DELETE
/v1/adapters/{name}``."""
