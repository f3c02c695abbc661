"""The one error type the CLI turns into a single line on stderr, and the OS errors that count as bad input."""
from __future__ import annotations

import errno

# the user's file system refuses: read-only, full, over quota, not permitted, a name too long. Not a bug: the
# CLI prints these as one line (exit 2) like a UserError, naming the path.
USER_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                         errno.ELOOP, errno.EFBIG})


class UserError(ValueError):
    """Bad input from the user: the message names the value and what is allowed."""


def is_user_os_error(e: BaseException) -> bool:
    """Whether `e` is an OSError of the user's file system (`USER_ERRNOS`), not of timm-moe's code."""
    return isinstance(e, OSError) and e.errno in USER_ERRNOS
