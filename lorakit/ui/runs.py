"""Training runs started from the UI: each is `python -m lorakit.cli train CONFIG` in its own process.

A run is known by its output folder (one active run per folder); the list survives a restart
of the UI in <state_dir>/runs.json. Stop sends SIGTERM, which the training loop handles as
Ctrl-C once the step in progress has ended: it saves the adapter and the state (<name>-stepN,
<name>-stepN-state) and exits 143; resume starts the same config with `--resume` (the newest state
in the folder). Not SIGINT: a UI started in the background by a shell without job control (a
script's `lorakit ui &`) passes an ignored SIGINT on to its children, and the run would not stop.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints import ADAPTER_SUFFIX, SAMPLE_RE, STATE_GLOB
from ..config.schema import TrainConfig
from ..errors import UserError
from ..io import atomic_write_bytes
from .writers import to_toml

CONFIG_NAME = "lorakit-ui-config.toml"
LOG_NAME = "lorakit-ui.log"


class Conflict(UserError):
    """The request clashes with a run's state (409)."""


class NotFound(UserError):
    """No such run (404)."""


@dataclass
class Run:
    id: str
    output_dir: str
    output_name: str
    config_file: str
    status: str = "new"          # running, stopping, finished, stopped, failed, past
    pid: int | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    total_steps: int | None = None
    resumes: int = 0
    events: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["log_tail"] = log_tail(Path(self.output_dir) / LOG_NAME)
        return d


def run_id(output_dir: Path) -> str:
    return hashlib.sha1(str(output_dir).encode()).hexdigest()[:12]


def log_tail(path: Path, n: int = 20) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"lorakit" in cmdline.read_bytes()


# exit codes of a run that was stopped: Ctrl-C (130) and SIGTERM (143, the UI's Stop), or killed by either
STOPPED = (130, 143, -signal.SIGINT, -signal.SIGTERM)


def orphan_outcome(run: Run) -> int:
    """The exit code a run started by an earlier `lorakit ui` most likely had, read from what it wrote:
    0 with the final adapter, 143 (stopped) with a state saved after it started, else 1."""
    out = Path(run.output_dir)
    newer = [p for p in (out / (run.output_name + ADAPTER_SUFFIX), *out.glob(STATE_GLOB))
             if p.exists() and p.stat().st_mtime >= run.started]
    if any(p.suffix == ".safetensors" for p in newer):
        return 0
    return 143 if newer else 1


class RunManager:
    def __init__(self, state_dir: Path):
        self.state_file = state_dir / "runs.json"
        self.procs: dict[str, subprocess.Popen] = {}
        self.runs: dict[str, Run] = {}
        if self.state_file.is_file():
            try:
                for d in json.loads(self.state_file.read_text(encoding="utf-8")):
                    self.runs[d["id"]] = Run(**d)
            except (ValueError, TypeError, KeyError):
                pass  # a damaged list is rebuilt as runs start

    # ---- bookkeeping ---------------------------------------------------------------
    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.state_file, json.dumps([asdict(r) for r in self.runs.values()], indent=1).encode())

    def refresh(self, run: Run) -> Run:
        if run.status not in ("running", "stopping") or run.pid is None:
            return run
        proc = self.procs.get(run.id)
        code = proc.poll() if proc is not None else (None if _alive(run.pid) else orphan_outcome(run))
        if code is None:
            return run
        run.returncode, run.ended = code, time.time()
        run.status = "finished" if code == 0 else "stopped" if code in STOPPED else "failed"
        run.events.append(f"{time.strftime('%H:%M:%S')} {run.status} (exit {code})")
        self.procs.pop(run.id, None)
        self.save()
        return run

    def get(self, rid: str) -> Run:
        run = self.runs.get(rid)
        if run is None:
            raise NotFound(f"no run '{rid}'", fix="GET /api/runs lists the runs")
        return self.refresh(run)

    def all(self) -> list[Run]:
        return sorted((self.refresh(r) for r in self.runs.values()), key=lambda r: -r.started)

    def active_for(self, output_dir: Path) -> Run | None:
        run = self.runs.get(run_id(output_dir))
        return run if run and self.refresh(run).status in ("running", "stopping") else None

    # ---- actions -------------------------------------------------------------------
    def start(self, cfg: TrainConfig, output_dir: Path, overwrite: bool, total_steps: int | None) -> Run:
        if self.active_for(output_dir):
            raise Conflict("a run is already active in this output folder", file=str(output_dir),
                           fix="stop it first, or choose another output_dir")
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file = output_dir / CONFIG_NAME
        atomic_write_bytes(config_file, to_toml(cfg).encode("utf-8"))
        run = Run(run_id(output_dir), str(output_dir), cfg.output_name, str(config_file), total_steps=total_steps)
        self.runs[run.id] = run
        self._spawn(run, ["--overwrite"] if overwrite else [], "started")
        return run

    def resume(self, rid: str) -> Run:
        run = self.get(rid)
        if run.status not in ("stopped", "failed"):
            raise Conflict(f"the run is {run.status}; only a stopped or failed run resumes", file=run.output_dir,
                           fix="start a new run (a finished run's folder: tick 'replace existing files')")
        if not any((p / "state.json").is_file() for p in Path(run.output_dir).glob(STATE_GLOB)):
            raise Conflict("no saved state to resume from", file=run.output_dir,
                           fix="stop a run (it saves its state) or train with save_state = true")
        run.resumes += 1
        self._spawn(run, ["--resume"], "resumed")
        return run

    def stop(self, rid: str) -> Run:
        run = self.get(rid)
        if run.status != "running" or run.pid is None:
            raise Conflict(f"the run is {run.status}, not running", file=run.output_dir)
        os.kill(run.pid, signal.SIGTERM)  # the loop saves adapter and state, as on Ctrl-C
        run.status = "stopping"
        run.events.append(f"{time.strftime('%H:%M:%S')} stop requested (SIGTERM)")
        self.save()
        return run

    def add_past(self, output_dir: Path) -> Run:
        """A finished run's folder (metrics.jsonl), to see its history and files."""
        if not (output_dir / "metrics.jsonl").is_file():
            raise UserError("no metrics.jsonl in this folder", file=str(output_dir),
                            fix="open the output_dir of a lorakit run")
        rid = run_id(output_dir)
        if rid not in self.runs:
            name = next((p.stem for p in output_dir.glob("*.safetensors")), "")
            self.runs[rid] = Run(rid, str(output_dir), name, "", status="past",
                                 started=(output_dir / "metrics.jsonl").stat().st_mtime)
            self.save()
        return self.runs[rid]

    def _spawn(self, run: Run, flags: list[str], what: str) -> None:
        cmd = [sys.executable, "-m", "lorakit.cli", "train", run.config_file, "--quiet", *flags]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(Path(run.output_dir) / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(f"\n== lorakit ui {what} a run at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.flush()
            # own session: Ctrl-C in the UI's terminal does not reach the run; Stop does
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self.procs[run.id] = proc
        run.pid, run.status, run.started, run.ended, run.returncode = proc.pid, "running", time.time(), None, None
        run.events.append(f"{time.strftime('%H:%M:%S')} {what}")
        self.save()

    def stop_all(self) -> None:
        """For tests and shutdown of a test server: end every run this process started."""
        for rid, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.refresh(self.runs[rid])


# ---- what a run folder holds -----------------------------------------------------------
def read_metrics(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete rows of metrics.jsonl from byte `offset`, and the offset after them."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a row still being written waits for its newline
    rows = []
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, offset + end


def samples(output_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted((output_dir / "sample").glob("*.png")):
        m = SAMPLE_RE.match(p.name)
        if not m:
            continue
        at = m["at"]
        out.append({"path": str(p), "name": p.name, "index": int(m["index"]), "time": m["time"],
                    "epoch": int(at[1:]) if at.startswith("e") else None,
                    "step": None if at.startswith("e") else int(at)})
    return out


def files(output_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(output_dir.iterdir()) if output_dir.is_dir() else []:
        if p.is_file() and not p.name.startswith("."):
            out.append({"path": str(p), "name": p.name, "size": p.stat().st_size,
                        "adapter": p.suffix == ".safetensors"})
        elif p.is_dir() and (p / "state.json").is_file():
            out.append({"path": str(p), "name": p.name + "/", "size": None, "adapter": False, "state": True})
    return out
