"""Build the Riverlake image with podman and report its size and build time.

    python deploy/containers/build.py                  # localhost/riverlake:dev
    python deploy/containers/build.py --record         # ... and benchmarks/results/image.json
    python deploy/containers/build.py --base python:3.11.11-slim-bookworm   # with a registry

Where no registry can be reached (this project's sandbox and CI), the base image is made
locally once: Debian bookworm (minbase) with python3, python3-venv and ca-certificates,
by debootstrap from Debian's own mirror, imported as ``localhost/riverlake-base:bookworm``.
Later builds reuse it (``--rebuild-base`` makes it again). The Dockerfile's default base
is the public ``python:3.11.11-slim-bookworm``; both give Python 3.11.

Two settings of machines like this one travel with every podman call (deploy/containers/
containers.conf, as CONTAINERS_CONF): no default ulimits, and the runc runtime. When the
machine reaches PyPI through its own certificate authority, its CA bundle is mounted into
the build and pip is pointed at it (PIP_CERT: the host's bundle whenever the host has
one; harmless where PyPI's own chain is trusted); nothing of it stays in the image.

Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = Path(__file__).with_name("containers.conf")
LOCAL_BASE = "localhost/riverlake-base:bookworm"
TAG = "localhost/riverlake:dev"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the host's CA bundle is mounted during the build (PIP_CERT points at it).
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA = "/run/riverlake-build-ca.crt"


class BuildError(RuntimeError):
    """A build step that failed; its message is one line naming the step."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def podman(*args: str, capture: bool = False, stdin=None) -> subprocess.CompletedProcess:
    """Run ``podman ARGS`` with this project's settings; raise BuildError on failure."""
    if shutil.which("podman") is None:
        raise BuildError("podman is not installed (apt-get install -y podman buildah runc)")
    proc = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        stdin=stdin,
        capture_output=capture,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] if capture else []
        raise BuildError(f"podman {args[0]} failed (exit {proc.returncode}) {' '.join(tail)}")
    return proc


def image_exists(ref: str) -> bool:
    if shutil.which("podman") is None:
        raise BuildError("podman is not installed (apt-get install -y podman buildah runc)")
    return subprocess.run(["podman", "image", "exists", ref], env=podman_env()).returncode == 0


def build_base(ref: str = LOCAL_BASE, mirror: str = MIRROR) -> float:
    """Debootstrap Debian bookworm with Python into ``ref``; the seconds it took."""
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (apt-get install -y debootstrap)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="riverlake-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             "bookworm", str(rootfs), mirror],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        # An imported tarball has no configuration: give it Debian's PATH and a shell.
        podman("import", "--change", f"ENV PATH={DEBIAN_PATH}", "--change", 'CMD ["/bin/bash"]',
               "-", ref, stdin=tar.stdout, capture=True)  # fmt: skip
        if tar.wait() != 0:
            raise BuildError(f"tar of {rootfs} failed (exit {tar.returncode})")
    return time.perf_counter() - t0


def build_image(tag: str = TAG, base: str = LOCAL_BASE, *, no_cache: bool = False) -> float:
    """``podman build`` the Dockerfile at the repository root; the seconds it took."""
    args = ["build", "--network", "host", "--build-arg", f"BASE={base}", "-t", tag]
    if Path(HOST_CA).exists():
        args += ["-v", f"{HOST_CA}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"]
    if no_cache:
        args.append("--no-cache")
    t0 = time.perf_counter()
    podman(*args, str(ROOT))
    return time.perf_counter() - t0


def image_size(ref: str) -> int:
    out = podman("image", "inspect", "--format", "{{.Size}}", ref, capture=True).stdout
    return int(out.strip())


def ensure_image(tag: str = TAG, base: str | None = None) -> str:
    """The image ``tag``, built from the local base (made once) unless ``base`` is given;
    podman's layer cache makes a rebuild of an unchanged tree take seconds."""
    if base is None:
        base = LOCAL_BASE
        if not image_exists(base):
            build_base(base)
    build_image(tag, base)
    return tag


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    return proc.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default=TAG)
    p.add_argument("--base", default=None, help=f"base image (default: {LOCAL_BASE}, made here)")
    p.add_argument("--rebuild-base", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="build every layer again")
    p.add_argument(
        "--record",
        action="store_true",
        help="a cold build (no layer cache), written to benchmarks/results/image.json",
    )
    args = p.parse_args(argv)
    try:
        base, base_seconds = args.base or LOCAL_BASE, None
        if args.base is None and (args.rebuild_base or not image_exists(base)):
            print(f"building the base {base} with debootstrap ...", flush=True)
            base_seconds = build_base(base)
        seconds = build_image(args.tag, base, no_cache=args.no_cache or args.record)
        size = image_size(args.tag)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = {
        "image": args.tag,
        "base": base,
        "size_bytes": size,
        "size_mb": round(size / 1e6, 1),
        "build_seconds": round(seconds, 1),
        "base_seconds": None if base_seconds is None else round(base_seconds, 1),
        "cold": bool(args.no_cache or args.record),
        "commit": _commit(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    if args.record:
        out = ROOT / "benchmarks" / "results" / "image.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
