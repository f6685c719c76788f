"""Two processes (torchrun, gloo on CPU) give the same adapter as one process with the doubled batch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.demo import make_synthetic_dataset

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found next to the interpreter")
@pytest.mark.parametrize("family,port", [("sd1", 29533), ("sdxl", 29534)])
def test_two_processes_equal_doubled_batch(tiny_model_dir, tmp_path, family, port):
    if family == "sdxl":
        from lorakit.models.tiny_sdxl import save_tiny_sdxl_pipeline

        tiny_model_dir = save_tiny_sdxl_pipeline(tmp_path / "xl", seed=1)
    data = make_synthetic_dataset(tmp_path / "data", n_images=4, repeats=1)
    conf = tmp_path / "c.toml"
    conf.write_text('resolution = 64\nnetwork_dim = 2\nseed = 9\nmax_train_steps = 3\nlearning_rate = 0.5\noptimizer_type = "SGD"\n'
                    'save_precision = "float"\nshuffle_caption = true\n', encoding="utf-8")
    base = ["train", str(conf), "--model", str(tiny_model_dir), "--data", str(data), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # the one-process run in this process (one thread, as the two below): a process start less
    assert main([*base, "--output", str(tmp_path / "one"), "--set", "train_batch_size=2"]) == 0
    two = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port), "-m", "lorakit.cli", *base,
                          "--output", str(tmp_path / "two"), "--set", "train_batch_size=1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "last.safetensors")
    b = load_file(tmp_path / "two" / "last.safetensors")
    assert a.keys() == b.keys()
    assert max(a[k].abs().max().item() for k in a if "lora_up" in k) > 1e-4  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # SGD: equal gradients, equal adapters
    rows_one = [json.loads(x) for x in open(tmp_path / "one" / "metrics.jsonl") if '"loss"' in x]
    rows_two = [json.loads(x) for x in open(tmp_path / "two" / "metrics.jsonl") if '"loss"' in x]
    assert [r["loss"] for r in rows_two] == pytest.approx([r["loss"] for r in rows_one], rel=1e-5)
    # only rank 0 wrote: one metrics row per step, not two
    assert len(rows_two) == 3
