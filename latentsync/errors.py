"""The one exception type for mistakes a user can fix (bad file, bad flag, missing checkpoint).

Entry points catch `UserError`, print its message as one line and exit with `EXIT_USER_ERROR`;
anything else is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, named in one readable line."""
