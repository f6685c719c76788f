"""`lorakit ui` in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser).

One flow, as a user would: load a seed JSON, take the tiny model and demo dataset, change
train_batch_size and watch the plan change, see a typo's error, check the dataset, start a run,
watch the loss chart gain points and a sample appear, stop it, resume it, reload the page, open
the finished file's inspect view. With LORAKIT_UI_SCREENSHOTS=DIR each page is saved there
(docs/ui/ holds the ones the README shows).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 240_000  # ms; a run on a loaded 2-core machine can be slow, a failure still shows quickly in the log

if not CHROMIUM.exists():
    pytest.skip("BROWSER TESTS SKIPPED: /usr/bin/chromium not found (apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="BROWSER TESTS SKIPPED: pip install playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    import uvicorn

    from lorakit.ui.app import create_app

    root = tmp_path / "root"
    root.mkdir()
    app = create_app([root], tmp_path / "state")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                       timeout_graceful_shutdown=1))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root, app
    app.state.ui.runs.stop_all()
    srv.should_exit = True
    thread.join(10)


@pytest.fixture()
def page():
    user_data = tempfile.mkdtemp(prefix="lorakit-ui-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(user_data, executable_path=str(CHROMIUM), args=ARGS, headless=True,
                                                   viewport={"width": 1280, "height": 860})
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        ctx.close()
    shutil.rmtree(user_data, ignore_errors=True)
    assert errors == [], errors


def shot(page, name: str, full: bool = False) -> None:
    folder = os.environ.get("LORAKIT_UI_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=full)
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)  # small PNGs for the repo


def cell(page, label: str) -> str:
    return page.locator(f'#plan-numbers div[data-k="{label}"] b').inner_text()


def points(page, chart: str) -> int:
    return int(page.eval_on_selector(f"#chart-{chart}", "e => e.dataset.points || '0'"))


def test_set_up_run_watch_stop_resume_inspect(server, page):
    base, root, app = server
    from lorakit.ui.app import PRESETS

    seed = root / "seed-prodigy-ia3.json"
    shutil.copy(PRESETS / "seed-prodigy-ia3.json", seed)
    page.goto(base + "/")

    # set up: a seed JSON, then the first-run offer (no base model in the seed)
    page.click("#browse-btn")  # the file chooser lists the roots, then the folder
    page.click(f"#browser-list li:text-is('{root.resolve()}/')")
    page.click("#browser-list li:text-is('seed-prodigy-ia3.json')")
    assert page.input_value("#open-path") == str(seed.resolve())
    page.click("#open-btn")
    page.wait_for_function("document.getElementById('f-network_type').value === 'ia3'")
    page.wait_for_selector("#first-run:not(.hidden)")
    page.click("#demo-btn")
    page.wait_for_selector('#plan-numbers div[data-k="steps/epoch"]', timeout=WAIT)
    assert cell(page, "images x repeats") == "40"  # the demo dataset: 8 images x 5 repeats
    assert cell(page, "steps/epoch") == "40"       # the seed's batch size 1
    page.fill("#f-train_batch_size", "2")
    page.wait_for_function("document.querySelector('#plan-numbers div[data-k=\"steps/epoch\"] b').textContent === '20'")
    page.fill("#f-train_batch_size", "4")
    page.wait_for_function("document.querySelector('#plan-numbers div[data-k=\"steps/epoch\"] b').textContent === '10'")

    # a typo: the CLI's message, on the list and next to nothing (it is no field); then fixed
    page.fill("#extra", "max_train_step = 5")
    page.wait_for_selector("#problems li:has-text(\"did you mean 'max_train_steps'?\")")
    page.fill("#f-train_batch_size", "four")
    page.wait_for_selector("#row-train_batch_size.bad #err-train_batch_size:has-text('valid integer')")
    assert page.locator("#problems li").count() == 2  # both at once
    page.fill("#extra", "")
    page.fill("#f-train_batch_size", "4")
    page.fill("#f-max_train_steps", "30")
    page.fill("#f-sample_every_n_steps", "10")
    page.wait_for_selector("#problems li.ok")
    assert cell(page, "total steps") == "30"

    # doctor: a copied image is flagged (exact duplicate, no caption) with its thumbnail
    data = root / "lorakit-ui-demo" / "data" / "5_zkv"
    shutil.copy(data / "zkv_00.png", data / "zkv_00_copy.png")
    page.click("#doctor-btn")
    page.wait_for_selector("#doctor-thumbs img", timeout=WAIT)
    assert "exact duplicates" in page.inner_text("#doctor")
    assert "zkv_00_copy.png: exact duplicate, no caption" in page.inner_text("#doctor-thumbs")
    page.evaluate("document.getElementById('side').scrollTop = document.getElementById('doctor-card').offsetTop - 200")
    shot(page, "doctor")
    (data / "zkv_00_copy.png").unlink()
    page.evaluate("document.getElementById('side').scrollTop = 0")
    shot(page, "setup")

    # run: start, charts gain points, a sample appears, stop
    page.click("#start-btn")
    page.wait_for_url("**/#run/*")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points || 0) >= 2", timeout=WAIT)
    page.wait_for_selector("#samples img.sample", timeout=WAIT)
    first = points(page, "loss")
    page.wait_for_function(f"Number(document.getElementById('chart-loss').dataset.points) > {first}", timeout=WAIT)
    assert points(page, "lr") >= 2 and points(page, "dlr") >= 2  # Prodigy: d*lr per group
    page.click("#stop-btn")
    page.wait_for_selector("#run-status:text-is('stopped')", timeout=WAIT)
    stopped_at = points(page, "loss")
    assert 2 <= stopped_at < 30
    out = root / "lorakit-ui-demo" / "run"
    assert list(out.glob("last-step*-state")), sorted(p.name for p in out.iterdir())

    # resume to the end; a reload shows the same run
    page.click("#resume-btn")
    page.wait_for_selector("#run-status:text-is('running')")
    page.wait_for_selector("#run-status:text-is('finished')", timeout=WAIT)
    page.reload()
    page.wait_for_selector("#run-status:text-is('finished')")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) === 30", timeout=WAIT)
    assert page.inner_text("#progress-text").startswith("step 30 / 30")
    assert page.locator("#warnings li").count() == 1  # the T_max warning, once (the resume repeats it)
    shot(page, "run", full=True)

    # results: files, downloads and the finished file's inspect view
    page.click("#results-link")
    page.wait_for_selector('button.inspect-btn[data-name="last.safetensors"]')
    assert page.locator('a[download="last.safetensors"]').count() == 1
    page.click('button.inspect-btn[data-name="last.safetensors"]')
    page.wait_for_selector("#inspect-text:has-text('algorithm:')")
    assert "ia3" in page.inner_text("#inspect-text")
    assert "A1111" in page.inner_text("#loaders")
    page.wait_for_function("Number(document.getElementById('history-chart').dataset.points) === 30")
    shot(page, "results")


def test_a_past_run_shows_its_charts_spike_mark_validation_and_samples(server, page):
    """No training: a run folder written by hand, opened as a past run (charts, marks and gallery from files)."""
    import json

    from PIL import Image

    base, root, app = server
    out = root / "past"
    (out / "sample").mkdir(parents=True)
    rows = []
    for step in range(1, 21):
        rows.append({"step": step, "epoch": 1 + (step > 10), "loss": 0.2 - step / 200, "loss_avg": 0.15, "time": step,
                     "lr/unet": 1.0, "dlr/unet": 1e-4 * (30 if step >= 12 else 1), "max_norm/keys_scaled": step % 3})
        if step == 12:
            rows.append({"warning": "d*lr spiked at step 12: more than x3 within 20 steps (now 0.003).", "step": 12})
        if step % 10 == 0:
            rows.append({"epoch_end": step // 10, "step": step, "loss_epoch": 0.15})
            rows.append({"validation_loss": 0.3 - step / 100, "epoch": step // 10, "step": step,
                         "validation_images": 2, "validation_batches": 1, "validation_trigger": "epoch"})
            for i in range(2):
                Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(out / "sample" / f"p_{step:06d}_{i:02d}_20261128120000.png")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.goto(base + "/#results")
    page.fill("#past-path", str(out))
    page.click("#past-btn")
    page.wait_for_function("Number(document.getElementById('history-chart').dataset.points) === 20")
    assert "20 steps; last loss 0.1000" in page.inner_text("#history-text")
    page.goto(base + "/#run/" + page.url.rsplit("/", 1)[1])
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) === 20")
    assert points(page, "dlr") == 20 and points(page, "grad") == 20 and points(page, "val") == 2
    assert page.eval_on_selector("#chart-dlr", "e => e.dataset.marks") == "1"  # the spike, marked at its step
    assert page.locator("#warnings li").count() == 1
    assert page.locator("#samples tr").count() == 3 and page.locator("#samples img.sample").count() == 4
    assert page.inner_text("#run-status") == "past"
