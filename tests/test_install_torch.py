"""scripts/install_torch.py: which torch build `make` installs, decided without installing anything."""
from __future__ import annotations

import importlib.util
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "install_torch", Path(__file__).resolve().parent.parent / "scripts" / "install_torch.py")
install_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_torch)

REQ = "torch==2.13.0"
PYPI_CUDA = {"metadata": {"name": "torch", "version": "2.13.0"},
             "download_info": {"url": "https://files.pythonhosted.org/packages/torch-2.13.0-cp311-manylinux.whl"}}
LOCAL_CPU = {"metadata": {"name": "torch", "version": "2.13.0+cpu"},
             "download_info": {"url": "file:///opt/wheels/torch-2.13.0%2Bcpu-cp311-manylinux.whl"}}


def _never(*_):
    raise AssertionError("must not be called on this path")


def _args(probe=_never, plan=_never, build="cpu", index="", system="Linux"):
    return install_torch.install_args(REQ, build, index, system, probe=probe, plan=plan)


def test_a_linux_cuda_wheel_comes_from_the_cpu_index_when_it_answers():
    assert _args(probe=lambda url: True, plan=lambda req: PYPI_CUDA) == ["--index-url", install_torch.CPU_INDEX, REQ]


@pytest.mark.parametrize("item", [LOCAL_CPU, {**PYPI_CUDA, "metadata": {"name": "torch", "version": "2.13.0+cpu"}},
                                  {**LOCAL_CPU, "metadata": {"name": "torch", "version": "2.13.0"}}, None])
def test_a_cpu_build_a_local_wheel_or_an_installed_torch_installs_as_configured(item):
    assert _args(probe=lambda url: True, plan=lambda req: item) == [REQ]


def test_offline_off_linux_or_asked_for_cuda_installs_as_configured_without_a_dry_run():
    assert _args(probe=lambda url: False) == [REQ]  # the plan (a pip dry run) is never asked for
    assert _args(system="Darwin") == [REQ]
    assert _args(build="cuda") == [REQ]
    assert _args(index="https://download.pytorch.org/whl/cu126") == [
        "--index-url", "https://download.pytorch.org/whl/cu126", REQ]
    with pytest.raises(SystemExit, match="TORCH_BUILD = 'gpu'"):
        _args(build="gpu")


def test_reachable_answers_for_a_live_server_and_fails_fast_for_a_closed_port():
    class Ok(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        assert install_torch.reachable(f"http://127.0.0.1:{server.server_port}/torch/", seconds=5)
    finally:
        server.server_close()
    start = time.perf_counter()
    assert not install_torch.reachable(f"http://127.0.0.1:{server.server_port}/torch/", seconds=2)
    assert time.perf_counter() - start < 3


def test_the_install_report_entry_is_read_and_a_missing_report_is_none(tmp_path):
    report = tmp_path / "r.json"
    report.write_text('{"install": [{"metadata": {"name": "sympy", "version": "1"}, "download_info": {"url": "x"}}, '
                      '{"metadata": {"name": "torch", "version": "2.13.0"}, "download_info": {"url": "https://x"}}]}')
    assert install_torch.fetches_cuda(install_torch.torch_entry(report))
    assert install_torch.torch_entry(tmp_path / "absent.json") is None
