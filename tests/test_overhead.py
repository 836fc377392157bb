"""Overhead profiling: the requested number of timed steps, per method, and a clear error otherwise."""
from __future__ import annotations

import pytest

from panacea_lab.studies.overhead import profile, profile_in_subprocess


def test_profile_times_exactly_the_requested_steps(tiny_model_dir):
    out = profile("panacea", model=str(tiny_model_dir), steps=3, batch_size=4, warmup=1)
    assert out["steps"] == 3 and out["method"] == "panacea" and out["device"] == "cpu"
    assert out["seconds_per_step"] > 0 and out["peak_mib"] >= 0


@pytest.mark.slow
def test_profile_in_a_fresh_process_reports_the_same_fields(tiny_model_dir):
    out = profile_in_subprocess("none", model=str(tiny_model_dir), steps=2, batch_size=4, warmup=1)
    assert out["steps"] == 2 and out["method"] == "none" and "peak_mib" in out


@pytest.mark.parametrize("kw, match", [({"method": "lora+"}, "use one of"), ({"method": "none", "steps": 0}, ">= 1")])
def test_bad_requests_fail_early(kw, match):
    with pytest.raises(ValueError, match=match):
        profile(**kw)


