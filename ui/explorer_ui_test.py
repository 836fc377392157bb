"""Browser test of notebook 04's explorers: `make ui-test`.

papermill (tests/test_notebooks.py) proves the notebook runs headless, but an ipywidgets explorer can
run fine there and still be dead for a person: no widget manager in the page, callbacks that never
redraw. This starts JupyterLab on localhost, opens 04_safety_coefficients (with smoke parameters, on the
embedded base model, whose answers the oracle judge can call harmful) in Debian's headless Chromium
through Playwright, and runs all cells from the Run menu. It flips the coefficient explorer's widgets and
checks that the heatmap is re-rendered each time; then it moves one of the live explorer's per-layer
sliders, presses "score", and checks that the HS shown changed and equals what the package's cached
evaluation gives for the setting shown. Screenshots land in runs/ui/. No browser is downloaded:
Playwright drives /usr/bin/chromium.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "04_safety_coefficients.py"
OUT = ROOT / "runs" / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OVERALL_TIMEOUT_S = 480
IMG = ".widget-interact .jp-OutputArea-output img"
LIVE = ".live-eps"  # the live explorer's box
PARAMS = {"model": "embedded", "seeds": [0, 1], "ratios": [0.2], "n": 20, "rho": 1.0, "n_eval": 4,
          "ablation_ratio": 0.2, "ablation_kinds": ["layer"], "explorer_n": 50, "explorer_max_scale": 3.0,
          "align_kw": {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}}
# Run All before the session has a kernel pops "Select Kernel"; the status bar says when it has one
# (the toolbar's execution indicator reads "idle" too early).
KERNEL_READY = """() => document.querySelector('.jp-Dialog') || (() => {
    const t = (document.querySelector('#jp-main-statusbar') || {}).innerText || '';
    return /\\| Idle/.test(t) && !/No Kernel/.test(t); })()"""

# The live explorer sits at the end of the notebook: scroll there (as a person would; Lab renders lazily),
# then "shown" = the element is there (an <img>: decoded).
SHOWN = """(sel) => { document.querySelectorAll('.jp-NotebookPanel .jp-WindowedPanel-outer')
    .forEach(e => { e.scrollTop = e.scrollHeight; });
    const i = document.querySelector(sel);
    return !!(i && (i.tagName !== 'IMG' || (i.complete && i.naturalWidth > 0))); }"""


def fail(msg: str) -> None:
    raise SystemExit(f"ui-test FAILED: {msg}")


def prepare_notebook(tmp: Path) -> Path:
    """The notebook as .ipynb with papermill's injected smoke-parameters cell; nothing is executed."""
    import jupytext
    import nbformat
    import papermill

    src = tmp / "source.ipynb"
    nb = jupytext.read(NOTEBOOK)
    nb.metadata.pop("jupytext", None)  # else Lab's jupytext extension treats the .ipynb as a py:percent view
    nbformat.write(nb, src)
    params = {**PARAMS, "runs": str(tmp / "runs"), "figures_dir": str(tmp / "figures")}
    dest = tmp / "lab" / f"{NOTEBOOK.stem}.ipynb"
    dest.parent.mkdir()
    papermill.execute_notebook(str(src), str(dest), parameters=params, prepare_only=True, progress_bar=False)
    return dest


def start_lab(tmp: Path, root_dir: Path) -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news / update toasts over the page
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(tmp / "jconfig"), "JUPYTER_RUNTIME_DIR": str(tmp / "jruntime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "IPYTHONDIR": str(tmp / "ipython")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--allow-root", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}",
           f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"JupyterLab exited with {proc.returncode}; see its log:\n{(tmp / 'jupyterlab.log').read_text()}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            return proc, base, token
        except OSError:
            time.sleep(0.5)
    fail("JupyterLab did not answer within 90 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def heatmap_changes(page, change, what: str) -> str:
    """Apply `change` (what a person does) and wait until the explorer shows a different image."""
    before = page.locator(IMG).first.get_attribute("src")
    change()
    page.wait_for_function(f"([sel, old]) => ({SHOWN})(sel) && document.querySelector(sel).src !== old",
                           arg=[IMG, before], timeout=90_000)
    print(f"  heatmap re-rendered after {what}")
    return page.locator(IMG).first.get_attribute("src")


def shown_score(page) -> tuple[str, dict, dict]:
    """The live explorer's HS as displayed, and the post-fine-tuning config and run it says it scored."""
    box = page.locator(LIVE)
    return (box.locator('[data-metric="HS"]').inner_text().strip(),
            json.loads(box.locator("[data-post]").get_attribute("data-post")),
            json.loads(box.locator("[data-run]").get_attribute("data-run")))


def package_hs(run: dict, post: dict, store_dir: Path) -> str:
    """HS of `run` under `post` by the package's own cached path, formatted as the explorer shows it."""
    from panacea_lab import pipeline
    from panacea_lab.explorer.live_eps import explorer_eval
    from panacea_lab.config import AttackConfig, defense_from_dict, from_dict
    from panacea_lab.training.store import RunStore

    cfg = from_dict(AttackConfig, run)
    ev = pipeline.evaluate("attack", cfg, RunStore(store_dir), explorer_eval(cfg.task, PARAMS["explorer_n"]),
                           defense_from_dict(post))
    return f"{ev['HS']:.1f}"


def slider_move(run: dict, first_hs: str, store_dir: Path) -> tuple[int, float, str]:
    """A slider (layer) and an end of its range (off, or the largest factor) at which the package's HS
    differs from the first one shown: the move the test makes, so that a change must show."""
    import torch

    from panacea_lab.explorer.live_eps import LiveEps, explorer_eval
    from panacea_lab.config import AttackConfig, from_dict
    from panacea_lab.training.store import RunStore

    torch.set_num_threads(1)
    cfg = from_dict(AttackConfig, run)
    live = LiveEps(cfg, RunStore(store_dir), explorer_eval(cfg.task, PARAMS["explorer_n"]))
    for layer in live.layers:
        for key, factor in (("End", PARAMS["explorer_max_scale"]), ("Home", 0.0)):
            scales = [factor if i == layer else 1.0 for i in live.layers]
            if f"{live.score(live.post(scales))['HS']:.1f}" != first_hs:
                return layer, factor, key
    fail(f"no single slider at 0 or {PARAMS['explorer_max_scale']} moves HS from {first_hs} on this run: "
         "raise rho or explorer_max_scale in PARAMS")


def move_slider(page, layer: int, key: str, factor: float) -> None:
    """Move layer `layer`'s slider to an end of its range with the keyboard, as a person may; typing the
    value into the slider's readout if the keyboard did not move it."""
    slider = page.locator(LIVE).locator(".widget-slider").nth(layer)
    readout = slider.locator(".widget-readout")
    slider.locator(".noUi-handle").first.press(key)
    try:
        page.wait_for_function("([el, want]) => el.innerText.trim() === want", arg=[readout.element_handle(),
                               f"{factor:.2f}"], timeout=5_000)
    except Exception:  # no keyboard support in this widget version: type the value
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(f"{factor:g}")
        page.keyboard.press("Enter")
    print(f"  layer {layer} slider at {readout.inner_text().strip()}")


def drive_live(page, stage: list[str], store_dir: Path) -> None:
    stage[0] = "waiting for the live explorer's first score"
    page.locator(f'{LIVE} [data-metric="HS"]').wait_for(timeout=120_000)
    page.locator(LIVE).scroll_into_view_if_needed()
    page.locator(LIVE).screenshot(path=str(OUT / "live_before.png"))
    first_hs, first_post, run = shown_score(page)
    first_img = page.locator(f"{LIVE} img").first.get_attribute("src")
    if package_hs(run, first_post, store_dir) != first_hs:
        fail(f"the first state shows HS {first_hs} but the package gives {package_hs(run, first_post, store_dir)}")
    stage[0] = "choosing a slider move that changes HS (package side)"
    layer, factor, key = slider_move(run, first_hs, store_dir)
    stage[0] = f"moving layer {layer}'s slider to {factor:g}"
    move_slider(page, layer, key, factor)
    stage[0] = "pressing score and waiting for the new numbers"
    page.locator(LIVE).get_by_role("button", name="score").click()
    page.wait_for_function("([sel, old]) => { const e = document.querySelector(sel); "
                           "return e && e.getAttribute('data-post') !== old; }",
                           arg=[f"{LIVE} [data-post]", json.dumps(first_post)], timeout=120_000)
    hs, post, _ = shown_score(page)
    stage[0] = "waiting for the heatmap of what is applied to change"
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); "
                           "return i && i.complete && i.naturalWidth > 0 && i.src !== old; }",
                           arg=[f"{LIVE} img", first_img], timeout=30_000)
    page.locator(LIVE).screenshot(path=str(OUT / "live_after.png"))
    if post.get("layer_scales", [1.0] * (layer + 1))[layer] != factor:
        fail(f"after moving layer {layer}'s slider to {factor:g} the explorer scored {post}")
    if hs == first_hs:
        fail(f"HS shown stayed {hs} after moving layer {layer}'s slider to {factor:g}")
    expected = package_hs(run, post, store_dir)
    if hs != expected:
        fail(f"the explorer shows HS {hs} for {post}, the package's evaluation gives {expected}")
    print(f"  live HS {first_hs} -> {hs} (layer {layer} x {factor:g}), equal to the package's cached evaluation")


def drive(page, base: str, token: str, stage: list[str], store_dir: Path) -> None:
    stage[0] = "opening the notebook"
    page.goto(f"{base}/lab/tree/{NOTEBOOK.stem}.ipynb?token={token}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    stage[0] = "waiting for the kernel"
    page.wait_for_function(KERNEL_READY, timeout=90_000)
    if page.locator(".jp-Dialog").count():  # e.g. "Select Kernel": take the default, as a person would
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.wait_for_function(KERNEL_READY, timeout=90_000)
    stage[0] = "Run > Run All Cells, waiting for the last cell (the live explorer's first score)"
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    print(f"  {stage[0]} ...")
    page.wait_for_function(SHOWN, arg=f'{LIVE} [data-metric="HS"]', polling=1000, timeout=300_000)
    page.wait_for_function(KERNEL_READY, timeout=60_000)  # widgets answer only once the kernel is idle
    stage[0] = "waiting for the coefficient explorer's heatmap"
    explorer = page.locator(".widget-interact").first
    explorer.scroll_into_view_if_needed()
    page.locator(IMG).first.wait_for(timeout=60_000)
    explorer.screenshot(path=str(OUT / "explorer_before.png"))
    first = page.locator(IMG).first.get_attribute("src")
    changes = [("show=noise_share", lambda: explorer.get_by_role("button", name="noise_share").click()),
               ("normalise=layer", lambda: explorer.get_by_role("button", name="layer", exact=True).click()),
               ("show=eps_share", lambda: explorer.get_by_role("button", name="eps_share").click()),
               ("run=<second run>", lambda: explorer.locator(".widget-dropdown select").select_option(index=1))]
    for what, change in changes:
        stage[0] = f"re-rendering the heatmap after {what}"
        last = heatmap_changes(page, change, what)
    if last == first:
        fail("after all the changes the heatmap is identical to the first one")
    explorer.screenshot(path=str(OUT / "explorer_after.png"))
    drive_live(page, stage, store_dir)
    page.screenshot(path=str(OUT / "lab.png"), full_page=True)


def browse(base: str, token: str, store_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    stage = ["starting Chromium"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            drive(page, base, token, stage, store_dir)
        except Exception as e:  # Playwright errors/timeouts: keep what the page showed
            page.screenshot(path=str(OUT / "failure.png"), full_page=True)
            fail(f"{stage[0]}: {str(e).splitlines()[0]}\n  screenshot: {OUT / 'failure.png'},"
                 f" server log: {OUT / 'jupyterlab.log'}")
        finally:
            browser.close()


def main() -> None:
    if not Path(CHROMIUM).exists():
        fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
    signal.signal(signal.SIGALRM, lambda *_: fail(f"overall timeout of {OVERALL_TIMEOUT_S} s"))
    signal.signal(signal.SIGTERM, lambda *_: fail("terminated"))  # still stops JupyterLab on the way out
    signal.alarm(OVERALL_TIMEOUT_S)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.png"), *OUT.glob("*.log")]:
        old.unlink()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="panacea-ui-") as tmp:
        tmp = Path(tmp)
        nb = prepare_notebook(tmp)
        proc, base, token = start_lab(tmp, nb.parent)
        try:
            print(f"ui-test: JupyterLab at {base}, notebook {nb.name}")
            browse(base, token, tmp / "runs")
        finally:
            stop(proc)
            (OUT / "jupyterlab.log").write_text((tmp / "jupyterlab.log").read_text())
    print(f"ui-test passed in {time.monotonic() - t0:.0f} s; screenshots in {OUT}/"
          " (explorer_before.png, explorer_after.png, live_before.png, live_after.png, lab.png)")


if __name__ == "__main__":
    main()
