"""Every CLI command with bad arguments: never exit 1 (a lorakit bug), always a reason.

Each case is (command line, the exit code lorakit gives). Exit 2 is a user mistake (argparse's
usage errors exit 2 too), 0 a warning only, 141 a reader that closed the pipe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorakit.cli import build_parser, main


def _data(t: Path) -> Path:
    (t / "data" / "2_x").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(t / "data" / "2_x" / "a.png")
    return t / "data"


def _write(t: Path, name: str, content: bytes | str) -> str:
    p = t / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


def _metrics(t: Path, text: str) -> str:
    _write(t / "run", "metrics.jsonl", text)
    return str(t / "run")


def _st(t: Path, tensors: dict) -> str:
    save_file(tensors, str(t / "w.safetensors"))
    return str(t / "w.safetensors")


ROW = json.dumps({"step": 1, "loss": 0.1, "lr/unet": 1e-4})

# (id, argv builder (tmp, model) -> argv, expected exit code)
CASES = [
    ("no command", lambda t, m: [], 2),
    ("unknown command", lambda t, m: ["trian"], 2),
    ("train: unknown flag", lambda t, m: ["train", "--epochs", "3"], 2),
    ("train: nothing given", lambda t, m: ["train"], 2),
    ("train: --format bogus", lambda t, m: ["train", "--format", "yaml"], 2),
    ("train: config is a folder", lambda t, m: ["train", str(t)], 2),
    ("train: config is binary", lambda t, m: ["train", _write(t, "c.toml", b"\x00\xff\xfe")], 2),
    ("train: kohya JSON is binary", lambda t, m: ["train", _write(t, "c.json", b"\x00\xff\xfe")], 2),
    ("train: --set without value type", lambda t, m: ["train", "--set", "network_dim=[1,2]"], 2),
    ("train: --set seed text", lambda t, m: ["train", "--set", "seed=abc"], 2),
    ("train: model is a folder without a model", lambda t, m: ["train", "--model", str(t), "--data",
                                                               str(_data(t)), "--output", str(t / "o")], 2),
    ("train: --resume of a missing folder", lambda t, m: ["train", "--model", str(m), "--data", str(_data(t)),
                                                           "--output", str(t / "o"), "--resume", str(t / "nope")], 2),
    ("train: output is a file", lambda t, m: ["train", "--model", str(m), "--data", str(_data(t)),
                                              "--output", _write(t, "f", "x")], 2),
    ("train: data is a file", lambda t, m: ["train", "--model", str(m), "--data", _write(t, "d.png", "x"),
                                            "--output", str(t / "o")], 2),
    ("train: output_name with a slash", lambda t, m: ["train", "--model", str(m), "--data", str(_data(t)),
                                                      "--output", str(t / "o"), "--set", 'output_name="a/b"'], 2),
    ("plan: no data", lambda t, m: ["plan"], 2),
    ("plan: data missing", lambda t, m: ["plan", "--data", str(t / "nope")], 2),
    ("plan: T_max=0", lambda t, m: ["plan", "--data", str(_data(t)), "--set", 'lr_scheduler_type="CosineAnnealingLR"',
                                    "--set", "lr_scheduler_args={T_max=0}"], 2),
    ("plan: --set unknown key", lambda t, m: ["plan", "--set", "steps=3"], 2),
    ("plot: no folder", lambda t, m: ["plot"], 2),
    ("plot: folder missing", lambda t, m: ["plot", str(t / "nope")], 2),
    ("plot: a file", lambda t, m: ["plot", _write(t, "f.txt", "x")], 2),
    ("plot: empty metrics", lambda t, m: ["plot", _metrics(t, "")], 0),
    ("plot: last line cut short", lambda t, m: ["plot", _metrics(t, ROW + "\n" + ROW[:15])], 0),
    ("plot: a line in the middle broken", lambda t, m: ["plot", _metrics(t, ROW[:15] + "\n" + ROW + "\n")], 2),
    ("plot: binary metrics", lambda t, m: ["plot", _metrics(t, "\x00\xff garbage\n" + ROW + "\n")], 2),
    ("plot: metrics rows that are lists", lambda t, m: ["plot", _metrics(t, "[1, 2]\n")], 0),
    ("doctor: no folder", lambda t, m: ["doctor"], 2),
    ("doctor: folder missing", lambda t, m: ["doctor", str(t / "nope")], 2),
    ("doctor: a file", lambda t, m: ["doctor", _write(t, "f.txt", "x")], 2),
    ("doctor: --resolution abc", lambda t, m: ["doctor", str(_data(t)), "--resolution", "abc"], 2),
    ("doctor: --resolution 0", lambda t, m: ["doctor", str(_data(t)), "--resolution", "0"], 2),
    ("doctor: --resolution 1,2,3", lambda t, m: ["doctor", str(_data(t)), "--resolution", "512,512,3"], 2),
    ("doctor: 0_ folder", lambda t, m: ["doctor", str(Path(_write(t, "dd/0_x/a.txt", "x")).parents[1])], 2),
    ("inspect: no file", lambda t, m: ["inspect"], 2),
    ("inspect: file missing", lambda t, m: ["inspect", str(t / "nope.safetensors")], 2),
    ("inspect: a folder", lambda t, m: ["inspect", str(t)], 2),
    ("inspect: not safetensors", lambda t, m: ["inspect", _write(t, "x.safetensors", "hello")], 2),
    ("inspect: empty file", lambda t, m: ["inspect", _write(t, "e.safetensors", b"")], 2),
    ("inspect: no adapter keys", lambda t, m: ["inspect", _st(t, {"foo": torch.zeros(2)})], 2),
    ("config: no subcommand", lambda t, m: ["config"], 2),
    ("config show: file missing", lambda t, m: ["config", "show", str(t / "nope.toml")], 2),
    ("config show: --set bad", lambda t, m: ["config", "show", "--set", "network_dim=-1"], 2),
    ("config keys: extra argument", lambda t, m: ["config", "keys", "x"], 2),
]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code if isinstance(e.code, int) else 1


def test_cases_cover_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)
    covered = {c[0].split(":")[0].split()[0] for c in CASES}
    assert commands - {"ui"} <= covered, commands - covered  # `ui` (another branch) brings its own


@pytest.mark.parametrize("case,argv,code", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_never_exit_1(case, argv, code, tmp_path, tiny_model_dir, capsys):
    got = run(argv(tmp_path, tiny_model_dir))
    out = capsys.readouterr()
    assert got != 1, out.err[-2000:]
    assert got == code, (got, out.err[-2000:])
    if code == 2:
        assert "error" in out.err, out.err  # a reason, not silence
    assert "Traceback" not in out.err and "internal error" not in out.err


def test_config_keys_into_a_closed_pipe_exits_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that already left: every write meets a closed pipe
    proc = subprocess.run([sys.executable, "-m", "lorakit.cli", "config", "keys"], stdout=write_end,
                          stderr=subprocess.PIPE, timeout=60)
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()
