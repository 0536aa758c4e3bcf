"""Typed errors. Library code raises these; the CLIs turn them into one line and a non-zero exit."""


class AdamixError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option). Its message is one line."""


class DataError(AdamixError):
    """A data file is missing, unreadable, empty, or lacks the expected columns or labels."""


class ModelError(AdamixError):
    """A base model cannot be found or its family is unknown (and no --targets was given)."""


class CheckpointError(AdamixError):
    """A mixture checkpoint is missing, incomplete, of an unknown format, or does not match its base model."""
