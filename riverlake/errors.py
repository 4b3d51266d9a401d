"""User-facing errors: each one is printed as a single line by the CLI, with no traceback."""


class RiverlakeError(Exception):
    """A mistake the user can fix (bad name, taken port, unreachable store, bad credentials)."""


class StackError(RiverlakeError):
    """The local stack could not be started, reached or stopped."""


class LakeError(RiverlakeError):
    """The lake store or a table could not be read or written."""
