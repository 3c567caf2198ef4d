"""The one exception family users see: a problem they can fix, with the fix in the message."""


class CxrkdError(Exception):
    """Bad input or state a user can fix; the CLI prints the message without a traceback."""
