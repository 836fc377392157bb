"""The command line answers `--help`, `--version` and a bad flag without importing torch: its parser
is built from `cli_registry.json`, a copy of the defense registry's command-line facts, which must
equal the registry itself."""
from __future__ import annotations

import subprocess
import sys

import pytest

from panacea_lab import cli_registry

PROBE = """
import sys
from panacea_lab.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "transformers", "peft", "pandas") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


def test_the_copy_is_the_registry():
    assert cli_registry.manifest() == cli_registry.from_registry(), (
        "panacea_lab/cli_registry.json differs from the registry: run `python -m panacea_lab.cli_registry --update`")


def test_the_baselines_and_default_half_of_the_copy_are_the_registry_s():
    from panacea_lab import defenses
    from panacea_lab.studies.baselines import baseline_methods

    assert cli_registry.baseline_methods() == baseline_methods()
    trained = defenses.trained_with_half()[0]
    assert cli_registry.default_half() == (trained, defenses.get(trained).post_half)


@pytest.mark.parametrize("argv,code", [(["--help"], 0), (["--version"], 0), (["defend", "--help"], 0),
                                       (["export", "--help"], 0), (["defend", "--ratios", "abc"], 2),
                                       (["defend", "--no-such-flag"], 2)])
def test_help_version_and_a_bad_flag_answer_without_the_heavy_imports(argv, code):
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == f"HEAVY [] CODE {code}", done.stdout + done.stderr


def test_every_defense_flag_and_option_of_the_registry_is_a_flag_of_defend():
    from panacea_lab import defenses
    from panacea_lab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["defend"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for name in defenses.names():
        record = defenses.get(name)
        if record.flag:
            assert f"--{record.flag}" in flags
            assert {f"--{o.replace('_', '-')}" for o in record.options} <= flags
