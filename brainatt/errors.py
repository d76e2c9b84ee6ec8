"""The project's error type, in a module that imports nothing, so the CLI can handle signals before heavy imports."""


class BrainattError(Exception):
    """Bad input or configuration: the message names the file and what to do; the CLI prints it as one line."""
