"""`lorakit ui`: a Starlette app serving plain HTML/JS, a JSON API and server-sent events.

Every route that names a file goes through Roots.check; every error a user can cause is a
4xx JSON {"error": message} (UserError -> 400, Forbidden -> 403, NotFound -> 404,
Conflict -> 409). No route runs a shell command: training is `python -m lorakit.cli train`
started with an argument list (runs.py).
"""
from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UserError
from . import forms
from .runs import Conflict, NotFound, RunManager, files, read_metrics, samples
from .security import Forbidden, Guard, Roots

HERE = Path(__file__).parent
PRESETS = HERE / "presets"
PATH_KEYS = ("pretrained_model_name_or_path", "vae", "train_data_dir", "reg_data_dir", "validation_data_dir",
             "network_weights", "output_dir", "logging_dir")
# the demo's trigger word (drawn blue once learnt) and a prompt the base model already knows
DEMO_PROMPTS = ("a zkv circle --w 64 --h 64 --d 1 --s 20\n"
                "a yellow square --w 64 --h 64 --d 2 --s 20")
FILE_KINDS = (".json", ".toml", ".safetensors", ".txt", ".png", ".jpg", ".jpeg", ".webp", ".jsonl", ".ckpt")


class UI:
    """The app's state: its roots, its runs and where the first-run demo lives."""

    def __init__(self, roots: Roots, state_dir: Path):
        self.roots = roots
        self.runs = RunManager(state_dir)
        self.demo_dir = roots.folders[0] / "lorakit-ui-demo"

    # ---- helpers -------------------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise UserError("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object")
        return data

    def path_problems(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Paths in the config outside the roots: the training process would read or write there."""
        out = []
        subsets = values.get("dataset_subsets") if isinstance(values.get("dataset_subsets"), list) else []
        pairs = [(k, values.get(k)) for k in PATH_KEYS] + [
            ("dataset_subsets", s.get("image_dir")) for s in subsets if isinstance(s, dict)]
        for key, value in pairs:
            if isinstance(value, str) and value.strip():
                try:
                    self.roots.check(value, key)
                except Forbidden as e:
                    out.append({"key": key, "message": f"key '{key}': {e}"})
        return out

    def checked(self, data: dict[str, Any]):
        """(config or None, problems) of a request's {values, extra}."""
        values, extra = data.get("values", {}), data.get("extra", "")
        if not isinstance(extra, str):
            raise UserError("extra must be text (TOML key = value lines)")
        cfg, problems = forms.validate(values, extra)
        if cfg is not None:
            problems += self.path_problems(cfg.model_dump())
        return (None if problems else cfg), problems

    # ---- set up --------------------------------------------------------------------
    async def info(self, request: Request) -> Response:
        return JSONResponse({"roots": [str(r) for r in self.roots.folders], "demo_dir": str(self.demo_dir),
                             "schema": forms.form_schema(),
                             "presets": sorted(p.name for p in PRESETS.iterdir() if p.suffix in (".json", ".toml"))})

    async def open_config(self, request: Request) -> Response:
        data = await self.body(request)
        fmt = data.get("format", "auto")
        if data.get("preset"):
            path = PRESETS / str(data["preset"])
            if path.parent != PRESETS or not path.is_file():
                raise NotFound(f"no preset '{data['preset']}'", fix="GET /api/info lists the presets")
        else:
            path = self.roots.check(data.get("path"), "config file")
            if not path.is_file():
                raise NotFound("config file not found", file=str(path), fix="check the path")
        return JSONResponse({"values": forms.open_config(path, fmt), "file": str(path)})

    async def check(self, request: Request) -> Response:
        cfg, problems = self.checked(await self.body(request))
        # the folder scan runs off the event loop, so that the run streams keep flowing meanwhile
        plan = await asyncio.to_thread(forms.plan, cfg) if cfg is not None else {
            "error": "fix the problems above to see the plan"}
        return JSONResponse({"problems": problems, "plan": plan,
                             "needs_model": cfg is not None and not cfg.pretrained_model_name_or_path})

    async def doctor(self, request: Request) -> Response:
        cfg, problems = self.checked(await self.body(request))
        if cfg is None:
            raise UserError("the config has problems: " + "; ".join(p["message"] for p in problems))
        return JSONResponse(await asyncio.to_thread(forms.doctor, cfg))

    async def save(self, request: Request) -> Response:
        from ..io import atomic_write_bytes
        from .writers import render

        data = await self.body(request)
        cfg, problems = self.checked(data)
        if cfg is None:
            raise UserError("the config has problems: " + "; ".join(p["message"] for p in problems))
        fmt = str(data.get("format", "toml"))
        path = self.roots.check(data.get("path"), "save path")
        if path.suffix != {"toml": ".toml", "kohya": ".json"}.get(fmt, path.suffix):
            raise UserError(f"a {fmt} config is saved as {'.toml' if fmt == 'toml' else '.json'}", file=str(path))
        if path.exists() and not data.get("overwrite"):
            raise Conflict("the file exists", file=str(path), fix="confirm overwrite, or choose another name")
        text = render(cfg, fmt)
        atomic_write_bytes(path, text.encode("utf-8"))  # never a half-written file under the user's name
        return JSONResponse({"path": str(path), "text": text})

    async def demo(self, request: Request) -> Response:
        """The shipped base model and the demo's concept dataset (`make demo`'s trigger word, 8
        images), for a first run that needs nothing and shows samples change."""
        from ..demo import make_concept_dataset
        from ..models.base import base_model_path

        await self.body(request)
        model = self.demo_dir / "base-model"  # a copy under the roots, where the UI reads and writes
        if not (model / "model_index.json").is_file():
            await asyncio.to_thread(shutil.copytree, base_model_path(), model, dirs_exist_ok=True)
        data = self.demo_dir / "data"
        if not data.is_dir():
            make_concept_dataset(data, n_images=8)
        values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "resolution": "64,64",
                  "output_dir": str(self.demo_dir / "run"), "sample_prompts": DEMO_PROMPTS,
                  "max_train_steps": 60, "max_train_epochs": "", "min_bucket_reso": 64}
        return JSONResponse({"values": values})

    # ---- files ---------------------------------------------------------------------
    async def listing(self, request: Request) -> Response:
        if not request.query_params.get("path"):
            return JSONResponse({"path": None, "entries": [{"name": str(r), "path": str(r), "dir": True}
                                                           for r in self.roots.folders]})
        path = self.roots.check(request.query_params.get("path"), "folder")
        if not path.is_dir():
            raise NotFound("not a folder", file=str(path))
        entries = []
        for p in sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if p.name.startswith("."):
                continue
            if p.is_dir() or p.suffix.lower() in FILE_KINDS:
                entries.append({"name": p.name, "path": str(p), "dir": p.is_dir()})
        parent = str(path.parent) if any(path.parent.is_relative_to(r) for r in self.roots.folders) else None
        return JSONResponse({"path": str(path), "parent": parent, "entries": entries[:500]})

    def existing_file(self, request: Request) -> Path:
        path = self.roots.check(request.query_params.get("path"), "file")
        root = next(r for r in self.roots.folders if path == r or path.is_relative_to(r))
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            # home is a root by default: ~/.ssh, ~/.aws and the like are never served
            raise Forbidden(f"{path} is hidden (a name starting with '.'); the UI does not serve hidden files")
        if not path.is_file():
            raise NotFound("no such file", file=str(path))
        return path

    async def file(self, request: Request) -> Response:
        path = self.existing_file(request)
        download = request.query_params.get("download") == "1"
        return FileResponse(path, filename=path.name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    async def thumb(self, request: Request) -> Response:
        from PIL import Image, UnidentifiedImageError

        path = self.existing_file(request)
        try:
            with Image.open(path) as im:
                im.thumbnail((128, 128))
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "PNG")
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"not an image: {e}", file=str(path)) from None
        return Response(buf.getvalue(), media_type="image/png")

    async def inspect(self, request: Request) -> Response:
        from ..inspect import format_report, inspect_file

        path = self.existing_file(request)
        r = await asyncio.to_thread(inspect_file, path)
        return JSONResponse({"path": str(path), "text": format_report(r), "loaders": r.loaders(),
                             "algorithms": dict(r.algorithms()), "modules": len(r.modules), "params": r.params,
                             "size": r.file_size, "metadata": r.metadata})

    # ---- runs ----------------------------------------------------------------------
    async def list_runs(self, request: Request) -> Response:
        return JSONResponse({"runs": [r.public() for r in self.runs.all()]})

    async def start_run(self, request: Request) -> Response:
        data = await self.body(request)
        cfg, problems = self.checked(data)
        if cfg is None:
            return JSONResponse({"error": "the config has problems", "problems": problems}, status_code=400)
        if not cfg.pretrained_model_name_or_path:
            raise UserError("no base model", key="pretrained_model_name_or_path",
                            fix="choose a checkpoint, or use the shipped tiny model (first-run button)")
        if not cfg.output_dir:
            raise UserError("no output folder", key="output_dir", fix="set output_dir")
        plan = await asyncio.to_thread(forms.plan, cfg)
        if "error" in plan:
            raise UserError(plan["error"])
        out = self.roots.check(cfg.output_dir, "output_dir")
        if (out / f"{cfg.output_name}.safetensors").exists() and not data.get("overwrite"):
            raise Conflict(f"{cfg.output_name}.safetensors exists in the output folder", file=str(out),
                           fix="tick 'replace existing files', or change output_name or output_dir")
        run = self.runs.start(cfg, out, bool(data.get("overwrite")), plan["total_steps"])
        return JSONResponse(run.public(), status_code=201)

    async def get_run(self, request: Request) -> Response:
        run = self.runs.get(request.path_params["rid"])
        out = Path(run.output_dir)
        rows, _ = read_metrics(out / "metrics.jsonl")
        return JSONResponse({**run.public(), "metrics": rows, "samples": samples(out), "files": files(out)})

    async def stop_run(self, request: Request) -> Response:
        await self.body(request)
        return JSONResponse(self.runs.stop(request.path_params["rid"]).public())

    async def resume_run(self, request: Request) -> Response:
        await self.body(request)
        return JSONResponse(self.runs.resume(request.path_params["rid"]).public())

    async def open_run(self, request: Request) -> Response:
        data = await self.body(request)
        return JSONResponse(self.runs.add_past(self.roots.check(data.get("path"), "run folder")).public())

    async def run_events(self, request: Request) -> Response:
        """Server-sent events: metrics rows, samples and status as they come; 'end' when the run is over."""
        run = self.runs.get(request.path_params["rid"])
        out = Path(run.output_dir)

        async def stream():
            offset, ident, seen, last = 0, None, set(), None
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                metrics = out / "metrics.jsonl"
                st = metrics.stat() if metrics.is_file() else None
                now = (st.st_ino, st.st_dev) if st else None
                if st is not None and (now != ident or st.st_size < offset):  # a resume rewrote the file
                    if offset:
                        yield "event: reset\ndata: {}\n\n"
                    offset, ident = 0, now
                rows, offset = read_metrics(metrics, offset)
                if rows:
                    yield f"event: metrics\ndata: {json.dumps(rows)}\n\n"
                new = [s for s in samples(out) if s["name"] not in seen]
                if new:
                    seen.update(s["name"] for s in new)
                    yield f"event: samples\ndata: {json.dumps(new)}\n\n"
                state = self.runs.get(run.id).public()
                key = (state["status"], state["pid"], state["resumes"], len(state["events"]))
                if key != last:
                    last = key
                    yield f"event: status\ndata: {json.dumps(state)}\n\n"
                if state["status"] not in ("running", "stopping") and not rows and not new:
                    yield f"event: end\ndata: {json.dumps({'files': files(out)})}\n\n"
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def index(self, request: Request) -> Response:
        return FileResponse(HERE / "static" / "index.html", headers={"Cache-Control": "no-store"})


def _error(status: int):
    async def handler(request: Request, exc: Exception) -> Response:
        msg = exc.format() if isinstance(exc, UserError) else str(exc)
        return JSONResponse({"error": msg}, status_code=status)
    return handler


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


def create_app(roots: list[str | Path], state_dir: str | Path, token: str | None = None) -> Starlette:
    ui = UI(Roots(roots), Path(state_dir))
    routes = [
        Route("/", ui.index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/info", ui.info),
        Route("/api/config/open", ui.open_config, methods=["POST"]),
        Route("/api/config/check", ui.check, methods=["POST"]),
        Route("/api/config/doctor", ui.doctor, methods=["POST"]),
        Route("/api/config/save", ui.save, methods=["POST"]),
        Route("/api/demo", ui.demo, methods=["POST"]),
        Route("/api/fs", ui.listing),
        Route("/api/file", ui.file),
        Route("/api/thumb", ui.thumb),
        Route("/api/inspect", ui.inspect),
        Route("/api/runs", ui.list_runs),
        Route("/api/runs", ui.start_run, methods=["POST"]),
        Route("/api/runs/open", ui.open_run, methods=["POST"]),
        Route("/api/runs/{rid}", ui.get_run),
        Route("/api/runs/{rid}/stop", ui.stop_run, methods=["POST"]),
        Route("/api/runs/{rid}/resume", ui.resume_run, methods=["POST"]),
        Route("/api/runs/{rid}/events", ui.run_events),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers = {Forbidden: _error(403), NotFound: _error(404), Conflict: _error(409), UserError: _error(400),
                HTTPException: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.ui = ui
    app.add_middleware(Guard, token=token)
    return app


def serve(host: str, port: int, roots: list[str], token: str | None, state_dir: str | None) -> int:
    import uvicorn

    from .security import is_loopback, new_token

    if not is_loopback(host) and not token:
        token = new_token()
    state = Path(state_dir) if state_dir else Path.home() / ".cache" / "lorakit" / "ui"
    app = create_app(roots, state, token)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"lorakit ui: http://{shown}:{port}/" + (f"?token={token}" if token else ""), flush=True)
    print("lorakit ui: folders it may use: " + ", ".join(str(r) for r in app.state.ui.roots.folders), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    return 0
