"""One setup for every notebook: the run store, the named setting's configs, where figures go, quiet output.

Each notebook's first cell used to build these itself, and the copies drifted apart: a notebook that
skipped the setting's training recipe analysed other runs than the notebook that trained them. Built
here once, the same parameters name the same runs in every notebook (and the same as the CLI's).
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from pathlib import Path

from tqdm.std import tqdm

from panacea_lab import settings
from panacea_lab.studies import recipe
from panacea_lab.plotting.figure_files import in_kernel
from panacea_lab.studies.sweeps import attack_config
from panacea_lab.config import EMBEDDED_MODEL, AlignConfig, AttackConfig, EvalConfig
from panacea_lab.defenses.panacea import PanaceaConfig
from panacea_lab.paths import PACKAGE_ROOT
from panacea_lab.training.store import RunStore

# Our loops that draw a tqdm bar per training run or evaluation; in a notebook they share one line per cell.
BAR_MODULES = ("panacea_lab.training.loop", "panacea_lab.evaluation.evaluate")


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a notebook's cells build on; `attack_kw` is the setting's AttackConfig fields with n on top."""

    setting: str
    task: str
    preset: str
    store: RunStore
    figures: Path
    align_cfg: AlignConfig
    eval_cfg: EvalConfig
    attack_kw: dict
    panacea: PanaceaConfig

    @property
    def sweep(self) -> dict:
        """The keyword arguments the sweeps share (attack_sweep, defense_sweep, baseline_sweep)."""
        return dict(task=self.task, preset=self.preset, align_cfg=self.align_cfg, eval_cfg=self.eval_cfg,
                    store=self.store, **self.attack_kw)

    def attack(self, p: float, seed: int, **overrides) -> AttackConfig:
        """The user's fine-tuning at ratio p, as the sweeps build it; keyword overrides (e.g. defense) win."""
        return attack_config(self.align_cfg, self.task, p, seed, self.preset, **{**self.attack_kw, **overrides})


def setup(model: str = EMBEDDED_MODEL, setting: str = settings.DEFAULT_SETTING, task: str = "sentiment",
          n: int | None = None, preset: str = "default", n_eval: int = 200, align_kw: dict | None = None,
          runs: str | None = None, figures_dir: str = "figures", rho: float | None = None,
          lam: float | None = None, quiet: bool | None = None) -> Setup:
    """A notebook's parameters as its configs. A relative `figures_dir` is the repository root's, so
    papermill run from any folder writes figures into the repository. `quiet` (default: inside a
    notebook kernel) silences third-party progress bars and warnings and shows figures inline."""
    from panacea_lab.environment import check_environment

    check_environment()  # a bad PANACEA_* variable fails here, naming it
    settings.get(setting)  # an unknown setting fails here, naming the known ones
    if quiet if quiet is not None else in_kernel():
        quiet_output()
        inline_figures()
    align_cfg = recipe.align_config(setting, recipe.model_config(setting, model), **(align_kw or {}))
    return Setup(setting=setting, task=task, preset=preset, store=RunStore(runs), figures=PACKAGE_ROOT / figures_dir,
                 align_cfg=align_cfg, eval_cfg=EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,)),
                 attack_kw=recipe.attack_overrides(setting, **({} if n is None else {"n": n})),
                 panacea=recipe.trained(setting, rho, lam))


def quiet_output() -> None:
    """One progress line per cell and no repeated third-party warnings (calling it again changes nothing).

    transformers draws a bar per model load and huggingface_hub one per download; peft asks every
    model `is_gradient_checkpointing`, which transformers deprecates with a FutureWarning each time.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:
        pass
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    if in_kernel():
        import importlib

        for name in BAR_MODULES:
            module = importlib.import_module(name)
            bar = getattr(module, "tqdm", None)
            if isinstance(bar, type) and issubclass(bar, tqdm):  # the bar class it draws with, not the package
                module.tqdm = CellBar


def inline_figures() -> None:
    """Figures as PNG outputs of their cells (the inline backend), unless the user chose another backend."""
    import matplotlib

    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and re.search(r"inline|^agg$", matplotlib.get_backend(), re.IGNORECASE):
        shell.run_line_magic("matplotlib", "inline")


class _CellLine:
    """A file for tqdm: each write replaces one text output per cell (a display updated in place)."""

    def __init__(self):
        self._cell, self._handle = None, None

    def write(self, text: str) -> int:
        shown = [part.strip() for part in re.split(r"[\r\n]|\x1b\[A", text) if part.strip()]
        if shown:
            from IPython import get_ipython
            from IPython.display import display

            shell = get_ipython()
            if shell is None:  # no kernel after all: a plain line on stderr
                sys.stderr.write(shown[-1] + "\n")
                return len(text)
            cell = shell.execution_count
            content = {"text/plain": shown[-1]}
            if cell != self._cell or self._handle is None:
                self._cell, self._handle = cell, display(content, raw=True, display_id=True)
            else:
                self._handle.update(content, raw=True)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_CELL_LINE = _CellLine()


class CellBar(tqdm):
    """A tqdm bar drawn as a text line of the running cell: every bar a cell opens (one per training
    run, one per evaluation) replaces the cell's one line, which keeps the last job's final state."""

    monitor_interval = 0  # no monitor thread: the line is only written from the cell's own thread

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "file": _CELL_LINE, "leave": True, "position": 0,
                                   "ncols": kwargs.get("ncols", 100), "ascii": True})
