"""Resume: a run that dies at step k and resumes gives the same losses and adapter as a straight run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lorakit.config.load import load_config
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.monitors import MetricsJsonl
from lorakit.train.loop import train
from train_helpers import Crash, tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=3, repeats=1)


DEFAULTS = {"network_dim": 2, "seed": 5, "max_train_steps": 7,
            "save_every_n_steps": 2, "save_state": True, "optimizer_type": "Prodigy",
            "lr_scheduler": "cosine", "learning_rate": 1.0, "network_dropout": 0.2, "shuffle_caption": True}


def cfg_for(model, data, out, **kw):
    return tiny_run_config(model, data, out, DEFAULTS, **kw)


def losses(out):
    return [json.loads(x)["loss"] for x in open(out / "metrics.jsonl") if '"loss"' in x]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    res = train(cfg_for(tiny_model_dir, data, out), [MetricsJsonl(out / "metrics.jsonl")])
    return losses(out), load_file(res.output_file)


@pytest.mark.parametrize("crash_at", [3, 4, 6])
def test_crash_and_resume_is_bit_identical(tiny_model_dir, data, tmp_path, straight, crash_at):
    cfg = cfg_for(tiny_model_dir, data, tmp_path)

    def crash(ev):
        if ev.kind == "step" and ev.step == crash_at:
            raise Crash()  # dies after writing step k's metrics, like a kill at that point

    with pytest.raises(Crash):
        train(cfg, [MetricsJsonl(tmp_path / "metrics.jsonl"), crash])
    assert len(losses(tmp_path)) == crash_at
    res = train(cfg, [MetricsJsonl(tmp_path / "metrics.jsonl")], resume="auto")
    want_losses, want_adapter = straight
    assert losses(tmp_path) == want_losses
    got = load_file(res.output_file)
    assert got.keys() == want_adapter.keys()
    assert all((got[k] == want_adapter[k]).all() for k in got)


def test_changed_config_is_refused_with_key(tiny_model_dir, data, tmp_path):
    cfg = cfg_for(tiny_model_dir, data, tmp_path, max_train_steps=2)
    train(cfg, [])
    with pytest.raises(ConfigError) as e:
        train(cfg.model_copy(update={"network_dim": 4}), [], resume="auto")
    assert e.value.key == "network_dim" and "was 2, now 4" in e.value.message
    # more steps is a safe change
    res = train(cfg.model_copy(update={"max_train_steps": 3}), [], resume="auto")
    assert res.steps == 3


def test_resume_without_state_is_a_clear_error(tmp_path):
    cfg = load_config(None, [], {"output_dir": str(tmp_path)})
    with pytest.raises(ConfigError) as e:
        train(cfg, [], resume="auto")
    assert "save_state" in e.value.fix


def test_kill_9_and_resume_via_cli(tiny_model_dir, data, tmp_path, straight):
    conf = tmp_path / "c.toml"
    cfg = cfg_for(tiny_model_dir, data, tmp_path / "out")
    conf.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.model_dump(mode="json").items()
                              if v is not None and k != "resolution" and not isinstance(v, dict))
                    + '\nresolution = "64,64"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "lorakit.cli", "train", str(conf), "--quiet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(losses(tmp_path / "out")) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    from lorakit.cli import main

    assert main(["train", str(conf), "--quiet", "--resume"]) == 0  # the CLI in this process: a process start less
    assert losses(tmp_path / "out") == straight[0]
    got = load_file(tmp_path / "out" / "last.safetensors")
    assert all((got[k] == straight[1][k]).all() for k in got)


def test_ctrl_c_saves_adapter_and_state_then_exits_130(tiny_model_dir, data, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('resolution = 64\nnetwork_dim = 2\nseed = 4\nmax_train_steps = 400\n', encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lorakit.cli", "train", str(conf), "--model", str(tiny_model_dir),
           "--data", str(data), "--output", str(out), "--quiet"]
    # SIGINT as a terminal delivers it: a pytest started in the background by a shell without job
    # control ignores SIGINT, and its children would inherit that
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len(losses(out)) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    steps = len(losses(out))
    saved = sorted(p.name for p in out.iterdir() if p.name.startswith("last-step"))
    assert saved == [f"last-step{steps:08d}-state", f"last-step{steps:08d}.safetensors"], (saved, steps)
    assert "interrupted" in err


class Poison(torch.optim.SGD):
    """SGD that writes a huge value into the adapter after step 2, as a diverging lr would."""

    def __init__(self, params, lr=1e-3, **kw):
        super().__init__(params, lr=lr)
        self.n = 0

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        self.n += 1
        if self.n == 2:
            for g in self.param_groups:
                for p in g["params"]:
                    p.fill_(3e38)


def test_nan_stops_with_a_clear_message_and_a_finite_adapter(tiny_model_dir, data, tmp_path, capsys):
    from lorakit.cli import main

    conf = tmp_path / "c.toml"
    conf.write_text('resolution = 64\nnetwork_dim = 2\nseed = 4\nmax_train_steps = 6\n'
                    'optimizer_type = "test_resume.Poison"\nlearning_rate = 1e-3\nsave_precision = "float"\n',
                    encoding="utf-8")
    code = main(["train", str(conf), "--model", str(tiny_model_dir), "--data", str(data),
                 "--output", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "became" in err and "step 3" in err and "learning rate" in err
    saved = tmp_path / "o" / "last-step00000002.safetensors"
    assert saved.is_file() and not (tmp_path / "o" / "last.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in load_file(saved).values())


def test_crash_during_a_state_save_resumes_from_the_previous_state(tiny_model_dir, data, tmp_path, straight,
                                                                   monkeypatch):
    import lorakit.train.state as state_mod

    cfg = cfg_for(tiny_model_dir, data, tmp_path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if "step00000004" in str(f):  # the second state save dies half-way
            real_save(obj, f, *a, **k)
            raise Crash()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(state_mod.torch, "save", dying_save)
    with pytest.raises(Crash):
        train(cfg, [MetricsJsonl(tmp_path / "metrics.jsonl")])
    monkeypatch.setattr(state_mod.torch, "save", real_save)
    states = sorted(p.name for p in tmp_path.iterdir() if "state" in p.name)
    assert "last-step00000004-state" not in states  # the half-written one never got its final name
    res = train(cfg, [MetricsJsonl(tmp_path / "metrics.jsonl")], resume="auto")
    assert losses(tmp_path) == straight[0]
    got = load_file(res.output_file)
    assert all((got[k] == straight[1][k]).all() for k in got)


def test_resume_kinds_come_from_the_fields(tmp_path):
    """check_resume_config reads each field's resume attribute: max_train_steps (safe) changes silently,
    save_precision (noted) and learning_rate (lr) with a line each; network_dim (none) and a learning
    rate going to 0 (a parameter group would vanish) are refused, both named in one error."""
    from lorakit.config.schema import TrainConfig
    from lorakit.train.state import check_resume_config

    old = TrainConfig(max_train_steps=10, seed=7)
    (tmp_path / "state.json").write_text(json.dumps({"config": old.model_dump(mode="json"), "seed": 7}))
    cfg, warnings = check_resume_config(old.model_copy(update={"max_train_steps": 20, "save_precision": "float",
                                                               "learning_rate": 2e-4, "seed": None}), tmp_path)
    assert cfg.seed == 7 and cfg.max_train_steps == 20
    assert [w.split(":")[1].strip() for w in warnings] == ["learning_rate", "save_precision"]
    with pytest.raises(ConfigError) as e:
        check_resume_config(old.model_copy(update={"network_dim": 16, "learning_rate": 0.0}), tmp_path)
    assert "2 setting(s) differ" in e.value.message
    assert "network_dim: was 8, now 16" in e.value.message and "learning_rate: was 0.0001, now 0.0" in e.value.message
