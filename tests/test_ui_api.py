"""`lorakit ui` API: set-up routes, security refusals, bad requests as 4xx (never 500), runs."""
from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from lorakit.config.load import load_config  # noqa: E402
from lorakit.demo import make_synthetic_dataset  # noqa: E402
from lorakit.ui.app import PRESETS, create_app  # noqa: E402

POST = {"Content-Type": "application/json"}


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture()
def client(root, tmp_path):
    app = create_app([root], tmp_path / "state")
    with TestClient(app, base_url="http://127.0.0.1:7860", raise_server_exceptions=False) as c:
        yield c
    app.state.ui.runs.stop_all()


def post(client, path, body, **headers):
    return client.post(path, content=json.dumps(body), headers={**POST, **headers})


def test_schema_groups_every_key():
    from lorakit.config.schema import TrainConfig
    from lorakit.ui.forms import form_schema

    s = form_schema()
    fields = {f["name"]: f for f in s["fields"]}
    assert set(fields) == set(TrainConfig.model_fields)
    assert [g["id"] for g in s["groups"]] == ["model", "dataset", "network", "optimizer", "scheduler", "training",
                                              "noise", "saving", "sampling"]
    assert fields["lr_warmup_steps"]["group"] == "scheduler" and fields["min_snr_gamma"]["group"] == "noise"
    # every key in a group the form lays out, and each group holding keys
    groups = {g["id"] for g in s["groups"]}
    assert {f["group"] for f in s["fields"]} == groups
    assert (fields["sample_prompts"]["group"], fields["output_dir"]["group"], fields["network_dim"]["group"],
            fields["train_data_dir"]["group"]) == ("sampling", "saving", "network", "dataset")
    assert (fields["train_batch_size"]["kind"], fields["train_batch_size"]["default"],
            fields["train_batch_size"]["range"]) == ("int", 1, ">= 1")
    assert fields["lr_scheduler"]["choices"][:2] == ["constant", "constant_with_warmup"]
    assert fields["clip_skip"]["range"] == ">= 1, <= 12"
    assert fields["resolution"]["default"] == "512,512"


def test_open_presets_and_plan_numbers(client, root):
    r = post(client, "/api/config/open", {"preset": "seed-prodigy-lokr.json"})
    assert r.status_code == 200, r.text
    values = r.json()["values"]
    assert values["network_type"] == "lokr" and values["max_train_epochs"] == 160
    values = post(client, "/api/config/open", {"preset": "first-run-lora.toml"}).json()["values"]
    assert (values["lr_scheduler"], values["max_train_steps"]) == ("cosine", 60)
    data = make_synthetic_dataset(root / "data", n_images=8, repeats=5)
    values.update(train_data_dir=str(data), train_batch_size="2", max_train_epochs="3", max_train_steps="",
                  lr_warmup_steps="0.1")
    r = post(client, "/api/config/check", {"values": values})
    body = r.json()
    assert body["problems"] == [] and body["needs_model"] is True
    p = body["plan"]
    # 8 images x 5 repeats = 40 samples; batch 2 -> 20 steps per epoch; 3 epochs -> 60 steps; 10 % warm-up
    assert (p["train_images"], p["samples_per_epoch"], p["steps_per_epoch"], p["total_steps"], p["warmup_steps"]) \
        == (40, 40, 20, 60, 6)
    values["train_batch_size"] = "4"
    assert post(client, "/api/config/check", {"values": values}).json()["plan"]["total_steps"] == 30


def test_all_problems_at_once_in_the_cli_words(client):
    r = post(client, "/api/config/check", {"values": {"train_batch_size": "two", "max_train_step": 5,
                                                      "network_dim": "0"}, "extra": "lr_sheduler = 'cosine'"})
    msgs = [p["message"] for p in r.json()["problems"]]
    assert len(msgs) == 4, msgs
    assert "form, key 'max_train_step': unknown key 'max_train_step'\n  fix: did you mean 'max_train_steps'?" in msgs
    assert any(m.startswith("more keys, key 'lr_sheduler'") and "did you mean 'lr_scheduler'" in m for m in msgs)
    assert any(m.startswith("key 'train_batch_size': Input should be a valid integer") for m in msgs)
    assert any(m.startswith("key 'network_dim': Input should be greater than or equal to 1") for m in msgs)
    assert r.json()["plan"] == {"error": "fix the problems above to see the plan"}


def test_paths_outside_the_roots_are_problems_and_403(client, root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.json").write_text("{}")
    r = post(client, "/api/config/check", {"values": {"train_data_dir": str(outside)}})
    assert [p["key"] for p in r.json()["problems"]] == ["train_data_dir"]
    for path in (str(outside / "a.json"), "../outside/a.json", str(root / ".." / "outside" / "a.json"), "/etc/passwd"):
        r = post(client, "/api/config/open", {"path": path})
        assert r.status_code == 403 and "outside the folders" in r.json()["error"], (path, r.text)
    (root / "link").symlink_to(outside)  # a symlink out of a root is outside too
    assert post(client, "/api/config/open", {"path": str(root / "link" / "a.json")}).status_code == 403
    assert client.get("/api/fs", params={"path": str(root / "link")}).status_code == 403
    assert client.get("/api/file", params={"path": "/etc/passwd"}).status_code == 403
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text("secret")
    r = client.get("/api/file", params={"path": str(root / ".ssh" / "id_ed25519")})
    assert r.status_code == 403 and "hidden" in r.json()["error"]
    assert client.get("/api/file", params={"path": str(root) + "/\x00x"}).status_code == 403
    assert client.get("/api/thumb", params={"path": "../../etc/hostname"}).status_code == 403
    assert post(client, "/api/config/save", {"values": {}, "path": str(outside / "b.toml")}).status_code == 403
    assert not (outside / "b.toml").exists()


def test_bad_requests_are_4xx_with_a_message(client, root):
    (root / "bad.json").write_text('{"network_dim": 8,,, oops')
    (root / "typo.json").write_text('{"network_dimm": 8}')
    (root / "img.png").write_text("not an image")
    cases = [
        (post(client, "/api/config/open", {"path": str(root / "bad.json")}), 400, "not valid JSON"),
        (post(client, "/api/config/open", {"path": str(root / "typo.json")}), 400, "did you mean 'network_dim'"),
        (post(client, "/api/config/open", {"path": str(root / "none.toml")}), 404, "config file not found"),
        (post(client, "/api/config/open", {"preset": "../app.py"}), 404, "no preset"),
        (client.post("/api/config/check", content=b"{nope", headers=POST), 400, "not valid JSON"),
        (post(client, "/api/config/check", [1, 2]), 400, "must be a JSON object"),
        (post(client, "/api/config/check", {"values": [1]}), 400, "values must be a JSON object"),
        (client.get("/api/runs/0123456789ab"), 404, "no run '0123456789ab'"),
        (client.get("/api/runs/0123456789ab/events"), 404, "no run"),
        (post(client, "/api/runs/0123456789ab/stop", {}), 404, "no run"),
        (post(client, "/api/runs/0123456789ab/resume", {}), 404, "no run"),
        (post(client, "/api/runs", {"values": {"train_batch_size": "x"}}), 400, "the config has problems"),
        (post(client, "/api/runs", {"values": {}}), 400, "no base model"),
        (post(client, "/api/runs/open", {"path": str(root)}), 400, "no metrics.jsonl"),
        (client.get("/api/thumb", params={"path": str(root / "img.png")}), 400, "not an image"),
        (client.get("/api/inspect", params={"path": str(root / "img.png")}), 400, "img.png"),
        (client.get("/api/file", params={"path": str(root / "none")}), 404, "no such file"),
        (client.get("/api/fs", params={"path": str(root / "img.png")}), 404, "not a folder"),
        (client.get("/api/nothing"), 404, "Not Found"),
        (post(client, "/api/config/save", {"values": {}, "path": str(root / "x.txt"), "format": "toml"}), 400,
         "saved as .toml"),
    ]
    for r, status, text in cases:
        assert r.status_code == status and text in r.json()["error"], (r.request.url, r.status_code, r.text)


def test_save_toml_and_kohya_json_read_back_the_same(client, root):
    values = post(client, "/api/config/open", {"preset": "seed-dadapt-loha.json"}).json()["values"]
    values["output_name"] = "my lora"
    want = load_config(PRESETS / "seed-dadapt-loha.json", []).model_copy(update={"output_name": "my lora"})
    for fmt, name in (("toml", "a.toml"), ("kohya", "a.json")):
        r = post(client, "/api/config/save", {"values": values, "path": name, "format": fmt})
        assert r.status_code == 200, r.text
        assert load_config(root / name).model_dump(mode="json") == want.model_dump(mode="json")
    before = (root / "a.toml").read_bytes()
    r = post(client, "/api/config/save", {"values": {"network_dim": 4}, "path": "a.toml", "format": "toml"})
    assert r.status_code == 409 and (root / "a.toml").read_bytes() == before  # never replaced unasked
    r = post(client, "/api/config/save", {"values": {"network_dim": 4}, "path": "a.toml", "format": "toml",
                                          "overwrite": True})
    assert r.status_code == 200 and load_config(root / "a.toml").network_dim == 4


def test_foreign_host_cross_origin_and_token(root, tmp_path):
    app = create_app([root], tmp_path / "state")
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/info").status_code == 200
        r = c.get("/api/info", headers={"Host": "evil.example:7860"})  # DNS rebinding
        assert r.status_code == 403 and "127.0.0.1/localhost only" in r.json()["error"]
        r = post(c, "/api/config/check", {"values": {}}, Origin="http://evil.example")
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        r = post(c, "/api/config/check", {"values": {}}, **{"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        r = c.post("/api/config/check", content='{"values": {}}', headers={"Content-Type": "text/plain"})
        assert r.status_code == 415  # a plain HTML form cannot send JSON
        assert post(c, "/api/config/check", {"values": {}}, Origin="http://127.0.0.1:7860").status_code == 200
    app = create_app([root], tmp_path / "state", token="s3cret")
    with TestClient(app, base_url="http://192.0.2.7:7860", follow_redirects=False) as c:
        r = c.get("/api/info")
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.get("/?token=s3cret")
        assert r.status_code == 303 and r.headers["location"] == "/" and "httponly" in r.headers["set-cookie"].lower()
        c.cookies.set("lorakit_ui_token", "s3cret")
        assert c.get("/api/info").status_code == 200


def test_serve_makes_a_token_for_a_foreign_host(monkeypatch, root, tmp_path, capsys):
    import uvicorn

    from lorakit.ui import app as ui_app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    ui_app.serve("0.0.0.0", 7999, [str(root)], None, str(tmp_path / "s"))
    out = capsys.readouterr().out
    assert "?token=" in out and seen["host"] == "0.0.0.0"
    ui_app.serve("127.0.0.1", 7999, [str(root)], None, str(tmp_path / "s"))
    assert "?token=" not in capsys.readouterr().out


def test_a_run_starts_lists_refuses_a_second_and_finishes(client, root, tiny_model_dir):
    data = make_synthetic_dataset(root / "data", n_images=2, repeats=1)
    values = {"pretrained_model_name_or_path": str(tiny_model_dir), "train_data_dir": str(data),
              "output_dir": str(root / "out"), "resolution": "64", "max_train_steps": "2", "network_dim": "2",
              "output_name": "t"}
    r = post(client, "/api/config/check", {"values": values})
    assert [p["key"] for p in r.json()["problems"]] == ["pretrained_model_name_or_path"]  # outside the root
    client.app.state.ui.roots.folders.append(tiny_model_dir.parent)
    r = post(client, "/api/runs", {"values": values})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    r2 = post(client, "/api/runs", {"values": values})
    assert r2.status_code == 409 and "already active" in r2.json()["error"]
    assert [x["id"] for x in client.get("/api/runs").json()["runs"]] == [rid]
    deadline = time.time() + 240
    while client.get(f"/api/runs/{rid}").json()["status"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    run = client.get(f"/api/runs/{rid}").json()
    assert run["status"] == "finished", run["log_tail"]
    assert [m["step"] for m in run["metrics"] if "loss" in m] == [1, 2]
    assert {"t.safetensors", "metrics.jsonl", "lorakit-ui-config.toml"} <= {f["name"] for f in run["files"]}
    assert load_config(root / "out" / "lorakit-ui-config.toml").max_train_steps == 2
    insp = client.get("/api/inspect", params={"path": str(root / "out" / "t.safetensors")}).json()
    assert insp["algorithms"] == {"lora": insp["modules"]} and insp["loaders"]["diffusers"] == "yes"
    events = client.get(f"/api/runs/{rid}/events").text  # a finished run's stream: history, then end
    assert "event: metrics" in events and events.rstrip().split("\n\n")[-1].startswith("event: end")
    r = post(client, "/api/runs", {"values": values})
    assert r.status_code == 409 and "t.safetensors exists" in r.json()["error"]  # never replaced unasked
    r = post(client, f"/api/runs/{rid}/stop", {})
    assert r.status_code == 409 and "not running" in r.json()["error"]
    r = post(client, f"/api/runs/{rid}/resume", {})
    assert r.status_code == 409 and "only a stopped or failed run resumes" in r.json()["error"]
    assert os.path.getsize(root / "out" / "lorakit-ui.log") > 0


def test_cli_ui_with_a_missing_root_is_exit_2(tmp_path, capsys):
    from lorakit.cli import main

    assert main(["ui", "--root", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s")]) == 2
    assert "missing is not a folder" in capsys.readouterr().err


def test_runs_of_an_earlier_ui_are_read_from_their_files(tmp_path):
    import subprocess
    import sys
    from dataclasses import asdict

    from lorakit.ui.runs import Run, RunManager

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    started = time.time() - 60
    runs = []
    for name, make in (("done", lambda o: (o / "a.safetensors").write_bytes(b"")),
                       ("stopped", lambda o: (o / "a-step00000003-state").mkdir()),
                       ("crashed", lambda o: None)):
        out = tmp_path / name
        out.mkdir()
        make(out)
        runs.append(asdict(Run(name, str(out), "a", "", status="running", pid=dead.pid, started=started)))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "runs.json").write_text(json.dumps(runs))
    manager = RunManager(tmp_path / "state")
    assert {r.id: (r.status, r.returncode) for r in manager.all()} == {
        "done": ("finished", 0), "stopped": ("stopped", 143), "crashed": ("failed", 1)}


def test_stop_saves_and_ends_a_run_even_when_the_ui_ignores_sigint(tmp_path, tiny_model_dir):
    """A UI started in the background by a script (no job control) ignores SIGINT and passes that on to
    its runs; Stop must still end the run the way Ctrl-C does: adapter and state saved, status stopped."""
    import signal

    from lorakit.ui.runs import RunManager

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    cfg = load_config(None, [], {"pretrained_model_name_or_path": str(tiny_model_dir), "train_data_dir": str(data),
                                 "output_dir": str(tmp_path / "out"), "resolution": 64, "max_train_steps": 2000,
                                 "network_dim": 2, "output_name": "t", "sample_prompts": None})
    manager = RunManager(tmp_path / "state")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = manager.start(cfg, tmp_path / "out", False, 2000)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        metrics, deadline = tmp_path / "out" / "metrics.jsonl", time.time() + 120
        while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count('"loss"') >= 2):
            assert manager.refresh(run).status == "running", (tmp_path / "out" / "lorakit-ui.log").read_text()
            time.sleep(0.1)
        manager.stop(run.id)
        manager.procs[run.id].wait(120)
    finally:
        manager.stop_all()
    run = manager.refresh(run)
    assert (run.status, run.returncode) == ("stopped", 143), (tmp_path / "out" / "lorakit-ui.log").read_text()
    assert len(list((tmp_path / "out").glob("t-step*-state"))) == 1
