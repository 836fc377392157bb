"""Install torch, the CPU build unless asked otherwise: `python scripts/install_torch.py "torch==2.13.0"`.

On Linux, PyPI's torch wheel is the CUDA build (about 3 GB with its nvidia-* wheels). When PyTorch's
CPU index answers within a few seconds, this asks pip what the configured index would install (a
dry run, no download): a CPU build or a local wheel is installed as configured, anything else from
the CPU index. Offline, or off Linux, torch installs exactly as configured, with no dry run; a CUDA
build installed that way is reported afterwards.

Environment: TORCH_BUILD=cuda installs whatever the configured index serves (PyPI: CUDA on Linux);
TORCH_INDEX=URL installs from that index, e.g. https://download.pytorch.org/whl/cu126. Arguments
after the requirement go to pip (e.g. --dry-run). Standard library only: it runs before anything else.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0
BUILDS = ("cpu", "cuda")


def pip_install(*args: str, report: Path) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--report", str(report), *args]
    return subprocess.run(cmd).returncode


def torch_entry(report: Path) -> dict | None:
    """torch's entry in a pip install report (None: not installed by that run, or no report written)."""
    try:
        items = json.loads(report.read_text()).get("install", [])
    except (OSError, ValueError):
        return None
    return next((i for i in items if i["metadata"]["name"].lower() == "torch"), None)


def planned(requirement: str) -> dict | None:
    """What `pip install requirement` would install from the configured index (None: already installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "plan.json"
        pip_install("--dry-run", "--no-deps", requirement, report=report)
        return torch_entry(report)


def fetches_cuda(item: dict | None) -> bool:
    """Whether `item` (a Linux install) is a CUDA build: a wheel from an index with no local version
    label. A '+cpu' (or any '+...') version names its build; a local file is what its owner put there."""
    if item is None:
        return False
    return "+" not in item["metadata"]["version"] and not item["download_info"]["url"].startswith("file:")


def reachable(url: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether `url` answers within `seconds`, name lookup included (a thread bounds what a socket
    timeout does not: a resolver that hangs)."""
    answered: list[bool] = []

    def probe():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds):
                answered.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answered)


def install_args(requirement: str, build: str = "cpu", index: str = "", system: str = platform.system(),
                 probe: Callable[[str], bool] = reachable,
                 plan: Callable[[str], dict | None] = planned) -> list[str]:
    """The `pip install` arguments for `requirement` under TORCH_BUILD=`build` and TORCH_INDEX=`index`."""
    if build not in BUILDS:
        raise SystemExit(f"TORCH_BUILD = {build!r}: use one of {', '.join(BUILDS)} (or set TORCH_INDEX=URL)")
    if index:
        return ["--index-url", index, requirement]
    if build == "cuda" or system != "Linux" or not probe(f"{CPU_INDEX}/torch/"):
        return [requirement]  # PyPI's wheels are CPU-only off Linux; offline, nothing else to choose
    return ["--index-url", CPU_INDEX, requirement] if fetches_cuda(plan(requirement)) else [requirement]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python scripts/install_torch.py REQUIREMENT [PIP ARGS...], e.g. torch==2.13.0")
    requirement, extra = argv[0], argv[1:]
    build, index = os.environ.get("TORCH_BUILD") or "cpu", os.environ.get("TORCH_INDEX", "")
    args = install_args(requirement, build, index)
    print("install_torch: pip install", " ".join([*args, *extra]), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "install.json"
        code = pip_install(*args, *extra, report=report)
        if code == 0 and build == "cpu" and not index and platform.system() == "Linux" and \
                fetches_cuda(torch_entry(report)):
            print(f"install_torch: {requirement} is a CUDA build ({CPU_INDEX} did not answer within "
                  f"{PROBE_SECONDS:g} s); TORCH_INDEX={CPU_INDEX} picks the CPU build", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
