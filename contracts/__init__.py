"""What every stage shares, at the bottom of the layering: the tasks and the default prompt template
(`tasks`), the mixture checkpoint's config (`checkpoint_format`), the export folder (`export_folder`), the
error types (`errors`), the one-line errors of every command (`command`) and atomic folder writes (`atomic`).

Torch-free and stage-free: these modules import only the standard library, click and each other, so the
training stage, the exporters, the server and the demo may all import them (tests/test_import_rules.py)."""
