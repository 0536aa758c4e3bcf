"""The KServe v2 / Open Inference Protocol API (``/v2``): routes, schemas, the binary tensor extension and the
protocol's error shape."""
