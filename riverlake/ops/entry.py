"""The ``riverlake`` console script: a command the stack's warm runner can serve goes
there (:mod:`.warm`) before anything heavy is imported (the command module alone takes
0.4 s); every other, or one it refuses, runs here (:mod:`.cli`)."""

from __future__ import annotations

import sys

from riverlake.ops import warm


def main() -> None:
    code = warm.forward(sys.argv)
    if code is not None:
        sys.exit(code)
    from riverlake.ops import cli

    cli.main(forwarded=True)
