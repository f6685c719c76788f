"""One run per output folder, SIGTERM / SIGHUP save like Ctrl-C, files follow the umask, and a
resume names every change (config and dataset) at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.lock import LOCK_NAME, Locked, acquire, output_lock, release
from lorakit.train.loop import train
from train_helpers import tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=3, repeats=1)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_run_is_refused_naming_the_owner(tmp_path):
    with output_lock(tmp_path):
        with pytest.raises(Locked) as e:
            acquire(tmp_path)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in e.value.message
        assert "another output_dir" in e.value.fix
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_a_dead_owner_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "x"}))
    (tmp_path / ".last.safetensors.abcd.tmp").write_bytes(b"half")
    path, warnings = acquire(tmp_path)
    assert "no longer running" in warnings[0] and "took over" in warnings[0]
    assert "removed 1 temporary" in warnings[1]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(path)


def test_a_lock_from_another_host_is_not_guessed_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": "gpu-node-7", "started": "x"}))
    with pytest.raises(Locked) as e:
        acquire(tmp_path)
    assert "gpu-node-7" in e.value.message and LOCK_NAME in e.value.fix


def test_a_folder_the_lock_made_is_removed_when_the_run_left_nothing(tmp_path):
    new = tmp_path / "runs" / "new"
    with output_lock(new):
        assert (new / LOCK_NAME).exists()
    assert not new.exists() and (tmp_path / "runs").exists()  # only the folder it made
    kept = tmp_path / "kept"
    with output_lock(kept):
        (kept / "metrics.jsonl").write_text("{}\n")
    assert (kept / "metrics.jsonl").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with output_lock(mine):
        pass
    assert mine.is_dir()  # the user's own empty folder stays


def test_a_run_that_fails_before_writing_leaves_no_output_folder(tmp_path, data, capsys):
    from lorakit.cli import main

    out = tmp_path / "out"
    code = main(["train", "--model", str(tmp_path / "no-such-model"), "--data", str(data), "--output", str(out),
                 "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_cli_second_run_exits_2(tiny_model_dir, data, tmp_path, capsys):
    from lorakit.cli import main

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                             "started": "2026-01-01 00:00:00"}))
        code = main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                     "--quiet"])
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err
    assert code == 2 and f"pid {sleeper.pid}" in err, err


def test_sighup_is_handled_as_sigterm_with_its_own_exit_code():
    # the same handler as SIGTERM (whose whole path the next test runs in a real process): held while a
    # step runs, raised at the step's end, then exit 128 + 1
    from lorakit import signals

    before = signal.getsignal(signal.SIGHUP)
    with signals.handled():
        signals.steps_begin()
        os.kill(os.getpid(), signal.SIGHUP)  # during a step: held
        with pytest.raises(signals.Terminated) as info:
            signals.raise_pending()
    assert (info.value.name, info.value.exit_code) == ("SIGHUP", 129)
    with signals.handled(), pytest.raises(signals.Terminated) as info:
        os.kill(os.getpid(), signal.SIGHUP)  # outside the steps: at once
        time.sleep(1)
    assert info.value.exit_code == 129
    assert signal.getsignal(signal.SIGHUP) == before  # put back after the run


def test_ctrl_c_waits_for_the_step_in_progress_unless_sigint_is_ignored(capsys):
    # Python raises KeyboardInterrupt wherever the main thread is: between the optimizer's update and the
    # step's count it saved the next step's weights under this step's name; held, it is raised at the end
    from lorakit import signals

    before = signal.getsignal(signal.SIGINT)  # a pytest-xdist worker ignores SIGINT
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as `lorakit train` has it
        with signals.handled():
            signals.steps_begin()
            os.kill(os.getpid(), signal.SIGINT)  # during a step: held, and said so
            time.sleep(0.2)
            with pytest.raises(signals.Terminated) as info:
                signals.raise_pending()
        assert (info.value.name, info.value.exit_code) == ("SIGINT", 130)
        assert "stopping after the step in progress" in capsys.readouterr().err
        with signals.handled(), pytest.raises(signals.Terminated):
            signals.steps_begin()
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
            time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the run
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job without job control
        with signals.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_saves_adapter_and_state(tiny_model_dir, data, tmp_path):
    sig, code = signal.SIGTERM, 143
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lorakit.cli", "train", "--model", str(tiny_model_dir), "--data", str(data),
           "--output", str(out), "--quiet", "--set", "resolution=64", "--set", "network_dim=2",
           "--set", "max_train_steps=100000", "--set", "seed=3"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and sum('"loss"' in x for x in metrics.read_text().splitlines()) >= 2:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err[-2000:]
    steps = sum('"loss"' in x for x in metrics.read_text().splitlines())
    saved = sorted(p.name for p in out.iterdir() if p.name.startswith("last-step"))
    assert saved == [f"last-step{steps:08d}-state", f"last-step{steps:08d}.safetensors"], (saved, steps)
    state = json.loads((out / f"last-step{steps:08d}-state" / "state.json").read_text())
    assert state["progress"]["step"] == steps  # the state is the finished step's, not a half step
    assert signal.Signals(sig).name in err and not (out / LOCK_NAME).exists()
    # the command prints its own lines, not transformers' weight-loading bars or torchvision notices
    assert "Loading weights" not in err and "torchvision" not in err, err[-2000:]


DEFAULTS = {"network_dim": 2, "seed": 5, "max_train_steps": 2, "save_every_n_steps": 1, "save_state": True,
            "sample_prompts": "a red square --w 64 --h 64 --s 2", "sample_every_n_steps": 2}


def test_every_file_follows_the_umask_and_resume_names_all_changes(tiny_model_dir, data, tmp_path):
    from lorakit.monitors import MetricsJsonl, Plots

    out = tmp_path / "o"
    cfg = tiny_run_config(tiny_model_dir, data, out, DEFAULTS)
    old = os.umask(0o022)
    try:
        train(cfg, [MetricsJsonl(out / "metrics.jsonl"), Plots(out)])
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".safetensors", ".png", ".jsonl", ".json", ".pt"} <= kinds, kinds
    assert {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in files
            if p.stat().st_mode & 0o777 != 0o644} == {}
    assert any(p.parent.name == "sample" for p in files) and (out / "loss.png").is_file()

    # all unsafe changes at once
    with pytest.raises(ConfigError) as e:
        train(cfg.model_copy(update={"network_dim": 4, "min_snr_gamma": 5.0, "max_train_steps": 3}), [],
              resume="auto")
    assert "2 setting(s)" in e.value.message and "network_dim: was 2, now 4" in e.value.message
    assert "min_snr_gamma: was" in e.value.message

    # a changed dataset is refused by name ...
    folder = next(p for p in data.iterdir() if p.is_dir())
    cap = next(folder.glob("*.txt"))
    text = cap.read_text()
    cap.write_text(text.strip() + ", edited\n")
    try:
        with pytest.raises(ConfigError) as e:
            train(cfg.model_copy(update={"max_train_steps": 3}), [], resume="auto")
        assert f"{folder.name}/{cap.stem}" in e.value.message and "caption changed" in e.value.message
        assert "--resume-changed-data" in e.value.fix
        # ... unless allowed; lr, sample and save settings change with a warning naming each
        seen = []
        res = train(cfg.model_copy(update={"max_train_steps": 3, "learning_rate": 2e-4, "sample_every_n_steps": 5,
                                           "save_every_n_steps": 2}),
                    [lambda ev: seen.append(ev.data["message"]) if ev.kind == "warning" else None],
                    resume="auto", resume_changed_data=True, overwrite=True)
    finally:
        cap.write_text(text)
    assert res.steps == 3
    joined = "\n".join(seen)
    for words in ("learning_rate: was 0.0001, now 0.0002", "sample_every_n_steps: was 2, now 5",
                  "save_every_n_steps: was 1, now 2", "the dataset changed"):
        assert words in joined, joined


def test_learning_rate_change_on_resume_takes_effect(tiny_model_dir, data, tmp_path):
    seen = []
    cfg = tiny_run_config(tiny_model_dir, data, tmp_path, {"network_dim": 2, "seed": 5, "max_train_steps": 2,
                                                          "save_every_n_steps": 1, "save_state": True,
                                                          "lr_scheduler": "constant", "learning_rate": 1e-4})
    train(cfg, [])
    train(cfg.model_copy(update={"max_train_steps": 3, "learning_rate": 3e-4}),
          [lambda ev: seen.append(ev.data["lrs"]) if ev.kind == "step" else None], resume="auto", overwrite=True)
    assert [round(v, 12) for v in seen[0].values()] == [3e-4] * len(seen[0])
