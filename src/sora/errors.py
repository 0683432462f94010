"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class SoraError(ValueError):
    """Bad input or an impossible request: the message names the problem in one line."""
