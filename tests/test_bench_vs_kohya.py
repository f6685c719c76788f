"""bench/vs_kohya.py: the lorakit / kohya ratios of one gpu_run.sh results file (issue 18)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(config, batch, img_s, peak_gb):
    return {"config": config, "batch": batch, "res": 512, "img_s": img_s, "median_s": batch / img_s,
            "p90_s": batch / img_s, "first_s": 3.0, "peak_gb": peak_gb, "mfu": 0.091}


def results(tmp_path, cpu=False, kohya_lines=None):
    tb = load("train_bench")
    lines = [f"lorakit gpu_run 2026-11-29T10:00Z commit abc device {'cpu' if cpu else 'NVIDIA H200'} budget 530s",
             "config          batch  res    img/s   med s   p90 s first s  peak GB    MFU  setting",
             tb.format_row(row("lora_b15", 15, 34.6, 4.87), cpu, "eager"),
             tb.format_row(row("lora_b15", 15, 112.5, 4.50), cpu, "compile regional"),
             tb.format_row(row("seed_a_b1", 1, 1.02, 2.61), cpu, "eager"),
             tb.format_row(row("seed_a_b1", 1, 2.90, 2.70), cpu, "compile regional + reduce-overhead"),
             # as bench/kohya_wrap.py and kohya_side.sh write them
             *(kohya_lines or [
                 "kohya lora_b15        batch 15  0.555 s/step  27.03 img/s  peak 5.91 GB  "
                 "(median of 12 steps after 4; p90 0.561 s)",
                 "kohya seed_a_b1       batch  1  1.282 s/step  0.78 img/s  (median of 12 steps after 4; p90 1.3 s)",
                 "kohya lokr_b1: failed or timed out (exit 124)",
                 "kohya lokr_b1         batch  1  0.962 s/step  1.04 img/s  (median of 12 steps after 4; p90 1.0 s)"])]
    p = tmp_path / "results.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_ratios_per_config_against_the_eager_and_the_fastest_row(tmp_path):
    out = load("vs_kohya").report(results(tmp_path).read_text(encoding="utf-8"))
    lines = {ln.split()[0]: ln for ln in out[1:]}
    # 34.6 / 27.03 = 1.28x eager; 112.5 / 27.03 = 4.16x compiled, which meets the 4x target
    assert lines["lora_b15"].split()[1:7] == ["27.03", "34.60", "1.28x", "112.50", "4.16x", "yes"]
    assert lines["lora_b15"].endswith("compile regional; 4.50 / 5.91")
    assert lines["seed_a_b1"].split()[1:7] == ["0.78", "1.02", "1.31x", "2.90", "3.72x", "no"]
    assert lines["seed_a_b1"].endswith("compile regional + reduce-overhead; -")  # kohya's peak not read
    assert "no lorakit row" in lines["lokr_b1"]
    assert len(out) == 4


def test_cpu_dry_run_says_its_ratios_mean_nothing_and_the_cli_runs(tmp_path):
    p = results(tmp_path, cpu=True)
    r = subprocess.run([sys.executable, str(BENCH / "vs_kohya.py"), str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "the ratios check the script only" in r.stdout
    assert "27.03" in r.stdout and "34.60" in r.stdout  # rows without the peak and MFU columns parse too
    assert subprocess.run([sys.executable, str(BENCH / "vs_kohya.py")], capture_output=True).returncode == 2


def test_the_wrapper_times_a_scripts_optimizer_steps_and_its_line_reads_back(tmp_path):
    """bench/kohya_wrap.py runs a script as __main__ (its folder importable, as sd-scripts' `library`)
    and times its optimizer steps; vs_kohya.py reads the line it writes."""
    (tmp_path / "kohya" / "library").mkdir(parents=True)
    (tmp_path / "kohya" / "library" / "__init__.py").write_text("PAUSE = 0.05\n")
    (tmp_path / "kohya" / "train.py").write_text(
        "import sys, time\nimport torch\nfrom library import PAUSE\n"
        "assert __name__ == '__main__' and sys.argv[1:] == ['--max_train_steps', '7']\n"
        "p = torch.nn.Parameter(torch.zeros(3))\nopt = torch.optim.AdamW([p])\n"
        "for _ in range(7):\n    p.grad = torch.ones(3)\n    opt.step()\n    time.sleep(PAUSE)\n")
    line = tmp_path / "line.txt"
    r = subprocess.run([sys.executable, str(BENCH / "kohya_wrap.py"), "--out", str(line), "--label", "lora_b15",
                        "--batch", "15", "--warmup", "2", "--", "kohya/train.py", "--max_train_steps", "7"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = line.read_text()
    assert text.startswith("kohya lora_b15        batch 15  ") and "(median of 4 steps after 2;" in text
    step = float(text.split()[4])
    assert 0.05 <= step < 0.5  # each step is the script's pause and an AdamW step of 3 numbers
    out = load("vs_kohya").report(results(tmp_path, kohya_lines=[text.strip()]).read_text())
    fields = out[1].split()
    img_s = float(text.split()[6])
    assert text.split()[7] == "img/s" and abs(img_s - 15 / step) < 0.01 * img_s
    assert fields[0] == "lora_b15" and float(fields[1]) == img_s
    assert fields[3] == f"{34.6 / float(fields[1]):.2f}x"
