"""A full, read-only or forbidden disk at every write site: exit 2 naming the path and the bytes,
no partial file under a final name, no temporary left; what a killed run left is cleaned.

The injected failures raise what each library really raises there (measured on a 300 KiB tmpfs):
safetensors  SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
torch.save   RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534')
PIL / numpy / open().write   OSError(28, 'No space left on device')
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from lorakit.events import Event, EventBus
from lorakit.io import DiskError, atomic_path, clean_stale_temporaries
from lorakit.train.state import Progress

ST_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
ST_READONLY = "Error while serializing: I/O error: Read-only file system (os error 30)"
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 551424 vs 551312"


def enospc():
    return OSError(errno.ENOSPC, "No space left on device")


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_adapter_safetensors_full_disk(tmp_path, monkeypatch):
    import lorakit.adapters.file as f

    (tmp_path / "last.safetensors").write_bytes(b"the previous adapter")

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise SafetensorError(ST_FULL)

    monkeypatch.setattr(f, "save_file", full)
    with pytest.raises(DiskError) as e:
        f.save_adapter_file(tmp_path / "last.safetensors", {"a": torch.zeros(1000)}, {}, overwrite=True)
    msg = e.value.format()
    assert "no space left" in msg and "last.safetensors" in msg and "free" in msg
    assert re.search(r"needs 4\.\d KiB", msg), msg  # 4000 bytes of tensors + the header
    assert only(tmp_path) == ["last.safetensors"]
    assert (tmp_path / "last.safetensors").read_bytes() == b"the previous adapter"


def test_adapter_read_only_says_make_it_writable(tmp_path, monkeypatch):
    import lorakit.adapters.file as f

    monkeypatch.setattr(f, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError(ST_READONLY)))
    with pytest.raises(DiskError) as e:
        f.save_adapter_file(tmp_path / "x.safetensors", {"a": torch.zeros(4)}, {}, overwrite=True)
    assert "read-only" in e.value.message and "writable" in e.value.fix
    assert only(tmp_path) == []


def fake_run(tmp_path: Path):
    from lorakit.config.load import load_config
    from lorakit.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    cfg = load_config(None, [], {"train_data_dir": str(data), "output_dir": str(tmp_path / "out")})
    net = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.ones(1, 4)).sum().backward()
    opt.step()
    (tmp_path / "out").mkdir()
    from lorakit.train.run import RunCaches
    return SimpleNamespace(output_dir=tmp_path / "out", accelerator=SimpleNamespace(is_main_process=True),
                           network=net, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1),
                           caches=RunCaches(), seed=1, cfg=cfg, given_cfg=cfg, bus=EventBus())


AT_STEP_3 = Progress(3, 1, 3)


def test_state_torch_zip_writer_short_write(tmp_path, monkeypatch):
    import lorakit.io as io
    import lorakit.train.state as st

    run = fake_run(tmp_path)
    st.save_state(run, "last-step00000002-state", AT_STEP_3)  # a good older state stays
    monkeypatch.setattr(io, "free_bytes", lambda folder: 1000)  # the folder is nearly full

    def short_write(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 cut")
        raise RuntimeError(TORCH_SHORT_WRITE)

    monkeypatch.setattr(st.torch, "save", short_write)
    with pytest.raises(DiskError) as e:
        st.save_state(run, "last-step00000003-state", AT_STEP_3)
    assert "no space left" in e.value.message and "needs" in e.value.message and "1000 bytes free" in e.value.message
    assert only(run.output_dir) == ["last-step00000002-state"]  # no .tmp folder, no half state


def test_state_torch_error_with_room_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """The zip writer failing on a disk with room: still the disk's (exit 2), its own words shown."""
    import lorakit.io as io
    import lorakit.train.state as st

    run = fake_run(tmp_path)
    monkeypatch.setattr(io, "free_bytes", lambda folder: 10 << 30)
    monkeypatch.setattr(st.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(TORCH_SHORT_WRITE)))
    with pytest.raises(DiskError) as e:
        st.save_state(run, "s-state", AT_STEP_3)
    assert "unexpected pos" in e.value.message and "no space" not in e.value.message
    assert only(run.output_dir) == []


def test_state_json_permission_denied(tmp_path, monkeypatch):
    import lorakit.train.state as st

    run = fake_run(tmp_path)
    real = Path.write_text

    def denied(self, *a, **k):
        if self.name == "state.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(DiskError) as e:
        st.save_state(run, "s-state", AT_STEP_3)
    assert "permission denied" in e.value.message and "writable" in e.value.fix
    assert only(run.output_dir) == []


def test_sample_png_full_disk(tmp_path, monkeypatch):
    import lorakit.sample.generate as g
    from lorakit.sample.prompts import SamplePrompt

    monkeypatch.setattr(g, "generate", lambda *a, **k: Image.new("RGB", (64, 64)))

    def full(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG half")
        raise enospc()

    monkeypatch.setattr(Image.Image, "save", full)
    from types import SimpleNamespace

    import torch

    # generate() is replaced: sample_prompts only brings the VAE and text encoders to the UNet's device
    model = SimpleNamespace(unet=torch.nn.Linear(1, 1), vae=torch.nn.Linear(1, 1),
                            text_encoders=[torch.nn.Linear(1, 1)])
    with pytest.raises(DiskError) as e:
        g.sample_prompts(model, [SamplePrompt("a cat")], tmp_path / "sample", "last", epoch=None, step=5,
                         sampler="euler_a", max_token_length=75, clip_skip=1)
    assert "no space left" in e.value.message and "sample" in e.value.file
    assert "needs more than the 9 bytes it wrote" in e.value.message  # the "PNG half" it wrote
    assert only(tmp_path / "sample") == []


def test_metrics_jsonl_full_disk(tmp_path):
    from lorakit.monitors import MetricsJsonl

    m = MetricsJsonl(tmp_path / "metrics.jsonl")
    m(Event("start", data={}))

    class Full:
        def write(self, s):
            raise enospc()

        def close(self):
            pass

    m.fh.close()
    m.fh = Full()
    with pytest.raises(DiskError) as e:
        m(Event("step", 1, 1, {"loss": 0.1, "loss_avg": 0.1, "lrs": {"unet": 1e-4}}))
    assert "metrics.jsonl" in e.value.file and "no space left" in e.value.message


def test_tensorboard_full_disk(tmp_path):
    from lorakit.monitors import TensorBoard

    tb = TensorBoard(tmp_path / "logs")
    tb(Event("start", data={}))

    class Full:
        def add_scalar(self, *a, **k):
            raise enospc()  # what TensorBoard's writer re-raises from its background thread

    tb.writer.close()
    tb.writer = Full()
    with pytest.raises(DiskError) as e:
        tb(Event("step", 1, 1, {"loss": 0.1, "loss_avg": 0.1, "lrs": {"unet": 1e-4}}))
    assert "logs" in e.value.file and "no space left" in e.value.message


def test_plot_png_full_disk(tmp_path, monkeypatch):
    import matplotlib.figure

    from lorakit.plot import plot_run

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1, "lr/unet": 1e-4}) + "\n")

    def full(self, fname, **kw):
        Path(fname).write_bytes(b"half")
        raise enospc()

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(DiskError) as e:
        plot_run(tmp_path)
    assert "loss.png" in e.value.file
    assert only(tmp_path) == ["metrics.jsonl"]


def test_latent_cache_full_disk(tmp_path, monkeypatch):
    from lorakit.data import latent_cache as lc

    target = tmp_path / "a_0064x0064_sd.npz"

    def full(fh, **arrays):
        fh.write(b"PK half")
        raise enospc()

    monkeypatch.setattr(lc.np, "savez", full)
    m = lc.Moments(torch.zeros(4, 8, 8), torch.ones(4, 8, 8))
    with pytest.raises(DiskError) as e:
        lc.save_entry(target, "key", m)
    assert "a_0064x0064_sd.npz" in e.value.file and "needs" in e.value.message
    assert only(tmp_path) == []


def test_latent_cache_writes_a_readable_entry(tmp_path):
    from lorakit.data import latent_cache as lc

    target = tmp_path / "a_0064x0064_sd.npz"
    lc.save_entry(target, "key", lc.Moments(torch.zeros(4, 8, 8), torch.ones(4, 8, 8)))
    assert only(tmp_path) == ["a_0064x0064_sd.npz"]
    assert lc.load_entry(target, "key", need_flip=False).std.sum() == 256


def test_a_bug_is_not_called_a_disk_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "x") as tmp:
            tmp.write_bytes(b"1")
            1 / 0
    assert only(tmp_path) == []


def test_stale_temporaries_of_a_killed_run_are_cleaned(tmp_path):
    (tmp_path / ".last.safetensors.k2j3.tmp").write_bytes(b"half")
    (tmp_path / ".last-step00000004-state.tmp").mkdir()
    (tmp_path / ".last-step00000004-state.tmp" / "optimizer.pt").write_bytes(b"half")
    (tmp_path / ".last-state.old").mkdir()  # killed between the two renames: the old state comes back
    (tmp_path / ".last-state.old" / "state.json").write_text("{}")
    (tmp_path / "last.safetensors").write_bytes(b"keep")
    done = clean_stale_temporaries(tmp_path)
    assert len(done) == 3
    assert only(tmp_path) == ["last-state", "last.safetensors"]
    assert (tmp_path / "last-state" / "state.json").read_text() == "{}"


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.png") as tmp:
            tmp.write_bytes(b"x")
        assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        with atomic_path(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"x")
        assert (tmp_path / "b.png").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --- a real full file system -------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 KiB tmpfs (CI runs as root); skipped, saying why, where mounting is refused."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); the injected failures above still ran")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_training_into_a_full_tmpfs_exits_2_and_leaves_only_whole_files(small_tmpfs, tiny_model_dir, tmp_path,
                                                                        capsys):
    from safetensors.torch import load_file

    from lorakit.cli import main
    from lorakit.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    out = small_tmpfs / "out"
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--quiet",
                 "--set", "resolution=64", "--set", "network_dim=8", "--set", "max_train_steps=40",
                 "--set", "save_every_n_steps=1", "--set", "save_state=true", "--set", 'save_precision="float"'])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "no space left on the device" in err and "needs" in err and str(out) in err, err[-2000:]
    names = [p.relative_to(out) for p in out.rglob("*")]
    assert not [n for n in names if str(n).endswith(".tmp") or ".tmp" in n.parts[0]], names
    for p in out.glob("*.safetensors"):
        load_file(p)  # every adapter under a final name is whole
    for state in out.glob("*-state"):
        assert {f.name for f in state.iterdir()} == {"adapter.safetensors", "optimizer.pt", "state.json"}
        json.loads((state / "state.json").read_text())
        torch.load(state / "optimizer.pt", weights_only=True)


def test_read_only_mount_exits_2(small_tmpfs, tiny_model_dir, tmp_path, capsys):
    from lorakit.cli import main
    from lorakit.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    (small_tmpfs / "out").mkdir()
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"remount read-only refused: {r.stderr.strip()}")
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output",
                 str(small_tmpfs / "out"), "--quiet", "--set", "resolution=64", "--set", "max_train_steps=1"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "out" in err and "read-only" in err.lower(), err[-2000:]
