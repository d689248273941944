"""User-facing errors that the CLI turns into a one-paragraph message and exit code 2."""


class DataError(Exception):
    """A data problem, told as one paragraph that names the file and the fix."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used, told as one paragraph."""
