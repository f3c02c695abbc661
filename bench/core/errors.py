"""The one error type the CLI turns into a single line on stderr."""


class UserError(ValueError):
    """Bad input from the user: the message names the value and what is allowed."""
