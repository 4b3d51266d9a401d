"""``python -m riverlake.demo api|replay``: the demo services the local stack runs."""

from __future__ import annotations

import argparse
import os

from riverlake.demo.api import serve_api
from riverlake.demo.replayer import replay


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m riverlake.demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("api")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    r = sub.add_parser("replay")
    r.add_argument("--rate", type=float, default=20.0, help="events per second (0: at once)")
    r.add_argument("--loop", action="store_true", help="start over with new events at the end")
    r.add_argument("--seconds", type=float, help="stop after this long")
    r.add_argument("--count", type=int, help="stop after this many events")
    args = p.parse_args(argv)
    if args.cmd == "api":
        serve_api(args.port, host=args.host, token=os.environ.get("RIVERLAKE_API_TOKEN") or None)
    else:
        sent = replay(rate=args.rate, loop=args.loop, seconds=args.seconds, count=args.count)
        print(f"published {sent}", flush=True)


if __name__ == "__main__":
    main()
