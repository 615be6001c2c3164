"""The one exception a user sees as a line and an exit code: every layer raises it."""


class AepipeError(Exception):
    """A problem the user can fix (bad path, wrong schema, NaN...). The CLI prints it as one line.

    exit_code is the command's (README, "Exit codes"): 2 for bad usage or bad input, 1 for a failure at run time.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
