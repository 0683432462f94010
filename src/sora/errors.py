"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class SoraError(ValueError):
    """Bad input or an impossible request: the message names the problem in one line."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name if it has none): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
