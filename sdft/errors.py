"""The one exception type for mistakes a user can fix (bad config, missing file, bad row).

The CLI turns it into one line on stderr and exit code 1; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input: the message says what, where, and what to do."""
