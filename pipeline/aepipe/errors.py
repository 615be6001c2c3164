"""The one exception a user sees as a line and an exit code: every layer raises it."""

import errno


class AepipeError(Exception):
    """A problem the user can fix (bad path, wrong schema, NaN...). The CLI prints it as one line.

    exit_code is the command's (README, "Exit codes"): 2 for bad usage or bad input, 1 for a failure at run time.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


FULL = (errno.ENOSPC, errno.EDQUOT)  # the output's disk (or the user's quota) is full
DISK_ERRORS = (*FULL, errno.EROFS)  # ... or read-only


def disk_error(e: BaseException | None, errnos=DISK_ERRORS) -> OSError | None:
    """The OSError of a full or read-only disk behind `e` (raised in a Ray task, it comes back
    wrapped: its causes are followed), None where there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in errnos:
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None
