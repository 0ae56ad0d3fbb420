"""User-facing errors.

Every error a user can cause (bad config key, malformed list line, corrupt record, mismatched
feature files ...) is raised as a :class:`FaceltError` whose message names the file, line, key or
record and says what was expected.  The CLI prints the message and exits with status 2 instead of
showing a traceback.
"""


class FaceltError(Exception):
    """An error caused by the user's input, with a message meant to be read by that user."""


class ConfigError(FaceltError):
    """A config file or ``--set`` override is wrong (unknown key, wrong type, bad value)."""


class DataError(FaceltError):
    """A data file (list, image, RecordIO, feature file) is missing or malformed."""


class CheckpointError(FaceltError):
    """A checkpoint is missing, corrupt, unsafe or from another model."""


class OutputError(FaceltError):
    """An output path cannot be written (a file where a folder is needed, no permission ...)."""


class TrainingError(FaceltError):
    """Training stopped: its loss turned non-finite or exploded, or its embeddings turned
    non-finite (the last good checkpoint is kept; none is written for the bad step)."""
