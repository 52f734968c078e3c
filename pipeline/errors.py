"""The one exception type for bad input.

A `UserError` means the user can fix it (a file, task, template, field or key is wrong); the CLI prints its
message on one line and exits with status 2. Anything else is a bug in flanpipe and exits with status 1.
"""


class UserError(Exception):
    """Bad input: the message names the file, task, template, field or key at fault and says how to fix it."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, cut at `limit` characters), for error lines
    that quote what a library said."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
