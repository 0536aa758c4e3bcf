"""``adamix-triton``: an export folder -> a Triton Inference Server model repository (`repository`, its command in
`cli`), with the Python-backend model it copies in (``python_backend/model.py``, package data)."""
