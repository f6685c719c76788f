"""Bad input: each case of docs/bad-input.md exits 2 with a message naming the problem and the fix.

The table below is the source of docs/bad-input.md (tests/test_bad_input.py::test_docs_table_is_current).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lorakit.cli import main
from lorakit.train.speed import INDUCTOR_CPU_RIGHT_FROM

ROOT = Path(__file__).resolve().parents[1]


def img(path: Path, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def good_data(tmp: Path) -> Path:
    img(tmp / "data" / "2_thing" / "a.png")
    (tmp / "data" / "2_thing" / "a.txt").write_text("thing, red", encoding="utf-8")
    return tmp / "data"


def toml(tmp: Path, text: str) -> Path:
    p = tmp / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


# (case, what the user did, setup(tmp, model) -> argv, words the message must contain)
def c_missing_config(t, m):
    return ["train", str(t / "nope.toml")]


def c_yaml_config(t, m):
    (t / "c.yaml").write_text("a: 1")
    return ["train", str(t / "c.yaml")]


def c_toml_syntax(t, m):
    return ["train", str(toml(t, "network_dim = = 3"))]


def c_typo_key(t, m):
    return ["train", str(toml(t, "netwrok_dim = 3"))]


def c_unknown_section(t, m):
    return ["train", str(toml(t, "[trainer]\nseed = 1"))]


def c_key_twice(t, m):
    return ["train", str(toml(t, "seed = 1\n[training]\nseed = 2"))]


def c_negative_lr(t, m):
    return ["train", str(toml(t, "learning_rate = -1e-4"))]


def c_dim_zero(t, m):
    return ["train", str(toml(t, "network_dim = 0"))]


def c_batch_zero(t, m):
    return ["train", str(toml(t, "train_batch_size = 0"))]


def c_resolution_text(t, m):
    return ["train", str(toml(t, 'resolution = "big"'))]


def c_resolution_not_x8(t, m):
    return ["train", str(toml(t, "resolution = 500"))]


def c_token_length(t, m):
    return ["train", str(toml(t, "max_token_length = 100"))]


def c_unet_and_te_only(t, m):
    return ["train", str(toml(t, "network_train_unet_only = true\nnetwork_train_text_encoder_only = true"))]


def c_all_lr_zero(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "unet_lr=0", "--set", "text_encoder_lr=0"]


def c_te_cache_with_trained_te(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "cache_text_encoder_outputs=true", "--set", "text_encoder_lr=1e-4"]


def c_no_model(t, m):
    return ["train", "--data", str(good_data(t)), "--output", str(t / "o")]


def c_model_missing(t, m):
    return ["train", "--model", str(t / "nomodel.safetensors"), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_model_not_sd(t, m):
    (t / "notes.safetensors").write_bytes(b"this is not a checkpoint")
    return ["train", "--model", str(t / "notes.safetensors"), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_model_sdxl(t, m):
    import torch
    from safetensors.torch import save_file

    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
               "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)}, str(t / "xl.safetensors"))
    return ["train", "--model", str(t / "xl.safetensors"), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_no_data_arg(t, m):
    return ["train", "--model", str(m), "--output", str(t / "o")]


def c_data_missing(t, m):
    return ["train", "--model", str(m), "--data", str(t / "nodata"), "--output", str(t / "o")]


def c_data_empty(t, m):
    (t / "empty").mkdir()
    return ["train", "--model", str(m), "--data", str(t / "empty"), "--output", str(t / "o")]


def c_data_no_prefix(t, m):
    img(t / "data" / "mychar" / "a.png")
    return ["train", "--model", str(m), "--data", str(t / "data"), "--output", str(t / "o")]


def c_data_no_images(t, m):
    (t / "data" / "10_mychar").mkdir(parents=True)
    (t / "data" / "10_mychar" / "a.txt").write_text("x")
    return ["train", "--model", str(m), "--data", str(t / "data"), "--output", str(t / "o")]


def c_data_is_subset_folder(t, m):
    good_data(t)
    return ["train", "--model", str(m), "--data", str(t / "data" / "2_thing"), "--output", str(t / "o")]


def c_caption_not_utf8(t, m):
    good_data(t)
    (t / "data" / "2_thing" / "a.txt").write_bytes("caf\xe9, latin-1".encode("latin-1"))
    return ["train", "--model", str(m), "--data", str(t / "data"), "--output", str(t / "o")]


def c_reg_missing(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--reg-data", str(t / "noreg"),
            "--output", str(t / "o")]


def c_output_not_writable(t, m):
    (t / "afile").write_text("x")
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "afile" / "out")]


def c_output_exists(t, m):
    (t / "o").mkdir()
    (t / "o" / "last.safetensors").write_bytes(b"precious")
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_unknown_optimizer(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "optimizer_type=AdamQ"]


def c_bad_optimizer_arg(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "optimizer_args={gamma_ray=1}", "--set", "resolution=64", "--set", "max_train_steps=1"]


def c_set_no_equals(t, m):
    return ["train", "--set", "max_train_steps"]


def c_set_unknown(t, m):
    return ["train", "--set", "max_train_step=3"]


def c_json_invalid(t, m):
    (t / "k.json").write_text('{"network_dim": 8 "unet_lr": 1}')
    return ["train", str(t / "k.json")]


def c_json_unknown_key(t, m):
    (t / "k.json").write_text(json.dumps({"LoRA_type": "Standard", "netwrok_dim": 8}))
    return ["train", str(t / "k.json")]


def c_sample_option(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", 'sample_prompts="a cat --zz 3"']


def c_sampler_name(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", 'sample_prompts="a cat"', "--set", "sample_sampler=euler_b"]


def c_prompt_file_missing(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", f'sample_prompts="{t / "prompts.txt"}"']


def c_resume_without_state(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"), "--resume"]


def c_resume_not_state(t, m):
    (t / "st").mkdir()
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--resume", str(t / "st")]


def adapter_file(t, name, tensors):
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(t / name))
    return str(t / name)


Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def c_weights_missing(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", f'network_weights="{t / "old_lora.safetensors"}"']


def c_weights_other_algo(t, m):
    path = adapter_file(t, "loha.safetensors", {f"{Q}.hada_w1_a": (32, 4), f"{Q}.hada_w1_b": (4, 32),
                                                 f"{Q}.hada_w2_a": (32, 4), f"{Q}.hada_w2_b": (4, 32),
                                                 f"{Q}.alpha": ()})
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", f'network_weights="{path}"']


def c_weights_rank(t, m):
    path = adapter_file(t, "r4.safetensors", {f"{Q}.lora_down.weight": (4, 32), f"{Q}.lora_up.weight": (32, 4),
                                               f"{Q}.alpha": ()})
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", f'network_weights="{path}"', "--set", "network_dim=8"]


def c_compile_mode(t, m):
    return ["train", str(toml(t, 'torch_compile = true\ntorch_compile_mode = "fastest"'))]


def c_dynamo_backend(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "torch_compile=true", "--set", "dynamo_backend=inductr"]


def c_inductor_on_cpu(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", "torch_compile=true", "--set", "dynamo_backend=inductor"]


def c_json_many_problems(t, m):
    p = t / "k.json"
    p.write_text('{"network_dim": "eight", "netwrok_alpha": 4, "seed": 1, "seed": 2, "flux1_checkbox": true}',
                 encoding="utf-8")
    return ["train", str(p)]


def c_json_sdxl(t, m):
    p = t / "k.json"
    p.write_text(json.dumps({"sdxl": True, "LoRA_type": "Standard", "pretrained_model_name_or_path": str(m),
                             "train_data_dir": str(good_data(t)), "output_dir": str(t / "o"), "max_train_steps": 1,
                             "max_resolution": "64,64", "enable_bucket": False}), encoding="utf-8")
    return ["train", str(p)]


def c_plot_no_metrics(t, m):
    return ["plot", str(t)]


def c_repeats_below_one(t, m):
    img(t / "data" / "0_char" / "a.png")
    img(t / "data" / "-5_char" / "b.png")
    return ["train", "--model", str(m), "--data", str(t / "data"), "--output", str(t / "o")]


def c_output_name_path(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", 'output_name="../escape"']


def c_output_in_data(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "data" / "out")]


def c_output_locked(t, m):
    import os
    import socket

    (t / "o").mkdir()
    (t / "o" / ".lorakit.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                       "started": "2026-01-01 00:00:00"}))
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_t_max_zero(t, m):
    return ["train", "--model", str(m), "--data", str(good_data(t)), "--output", str(t / "o"),
            "--set", 'lr_scheduler_type="CosineAnnealingLR"', "--set", "lr_scheduler_args={T_max=0}"]


def c_plan_t_max_zero(t, m):
    return ["plan", "--data", str(good_data(t)), "--set", 'lr_scheduler_type="CosineAnnealingLR"',
            "--set", "lr_scheduler_args={T_max=0}"]


def c_set_wrong_type(t, m):
    return ["train", str(toml(t, "seed = 1")), "--set", "network_dim=abc"]


def c_single_file_unknown_width(t, m):
    from lorakit.models.tiny import save_tiny_single_file

    path, _ = save_tiny_single_file(t / "tiny.safetensors")
    return ["train", "--model", str(path), "--data", str(good_data(t)), "--output", str(t / "o")]


def c_doctor_resolution(t, m):
    return ["doctor", str(good_data(t)), "--resolution", "abc"]


def c_plot_broken_line(t, m):
    (t / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n{"step": 2, "lo\n{"step": 3, "loss": 0.1}\n')
    return ["plot", str(t)]


CASES = [
    ("config file missing", c_missing_config, ["nope.toml", "not found"]),
    ("config of unknown type", c_yaml_config, ["c.yaml", ".toml", ".json"]),
    ("TOML syntax error", c_toml_syntax, ["not valid TOML"]),
    ("typo in a key", c_typo_key, ["netwrok_dim", "did you mean 'network_dim'"]),
    ("unknown [section]", c_unknown_section, ["trainer", "section"]),
    ("a key set twice", c_key_twice, ["seed", "set twice"]),
    ("negative learning rate", c_negative_lr, ["learning_rate", "greater than or equal to 0"]),
    ("network_dim 0", c_dim_zero, ["network_dim", "greater than or equal to 1"]),
    ("batch size 0", c_batch_zero, ["train_batch_size", "greater than or equal to 1"]),
    ("resolution not a number", c_resolution_text, ["resolution", "W,H"]),
    ("resolution not a multiple of 8", c_resolution_not_x8, ["resolution", "multiple of 8"]),
    ("max_token_length not 75/150/225", c_token_length, ["max_token_length", "75, 150 or 225"]),
    ("UNet-only and TE-only both set", c_unet_and_te_only, ["network_train_unet_only", "at most one"]),
    ("both learning rates 0", c_all_lr_zero, ["nothing would train"]),
    ("TE output cache with a trained TE", c_te_cache_with_trained_te,
     ["cache_text_encoder_outputs", "text_encoder_lr = 0"]),
    ("no model given", c_no_model, ["--model"]),
    ("model path does not exist", c_model_missing, ["nomodel.safetensors", "does not exist"]),
    ("model file is not a checkpoint", c_model_not_sd, ["notes.safetensors", "cannot read this file as a model checkpoint"]),
    ("SDXL checkpoint with wrong tensors", c_model_sdxl, ["xl.safetensors", "SDXL"]),
    ("no data folder given", c_no_data_arg, ["--data"]),
    ("data folder missing", c_data_missing, ["nodata", "folder does not exist"]),
    ("data folder empty", c_data_empty, ["empty", "folder is empty", "10_mychar"]),
    ("subfolders without <repeats>_", c_data_no_prefix, ["mychar", "10_mychar"]),
    ("subfolders without images", c_data_no_images, ["10_mychar", "image"]),
    ("data points at a <repeats>_ folder itself", c_data_is_subset_folder, ["2_thing", "parent"]),
    ("caption not UTF-8", c_caption_not_utf8, ["a.txt", "UTF-8"]),
    ("reg folder missing", c_reg_missing, ["noreg", "reg_data_dir"]),
    ("output folder cannot be created", c_output_not_writable, ["output", "afile"]),
    ("adapter exists, no --overwrite", c_output_exists, ["last.safetensors", "--overwrite"]),
    ("unknown optimizer", c_unknown_optimizer, ["unknown optimizer 'AdamQ'", "did you mean 'Adam'"]),
    ("optimizer rejects an argument", c_bad_optimizer_arg, ["gamma_ray"]),
    ("--set without =", c_set_no_equals, ["KEY=VALUE"]),
    ("--set of an unknown key", c_set_unknown, ["did you mean 'max_train_steps'"]),
    ("kohya JSON not parseable", c_json_invalid, ["k.json", "not valid JSON"]),
    ("kohya JSON with an unknown key", c_json_unknown_key, ["netwrok_dim", "network_dim"]),
    ("kohya JSON: wrong type, typo, key twice, family switch", c_json_many_problems,
     ["4 problems", "'eight'", "did you mean 'network_alpha'", "'seed' is set twice", "flux1_checkbox"]),
    ("kohya JSON with sdxl true, SD1.x model", c_json_sdxl, ["sdxl = true", "SD1.x"]),
    ("unknown sample prompt option", c_sample_option, ["--zz"]),
    ("unknown sampler", c_sampler_name, ["euler_b", "euler_a"]),
    ("sample prompt file missing", c_prompt_file_missing, ["prompts.txt", "not found"]),
    ("--resume with no saved state", c_resume_without_state, ["save_state"]),
    ("--resume of a folder that is no state", c_resume_not_state, ["state.json"]),
    ("network_weights file missing", c_weights_missing, ["old_lora.safetensors", "network_weights", "does not exist"]),
    ("network_weights of another algorithm", c_weights_other_algo, ["loha", "network_type", "network_weights"]),
    ("network_weights of another rank", c_weights_rank, [Q, "rank 4", "network_dim", "dim_from_weights"]),
    ("unknown torch_compile_mode", c_compile_mode, ["torch_compile_mode", "reduce-overhead"]),
    ("unknown dynamo_backend", c_dynamo_backend, ["dynamo_backend", "inductr", "aot_eager"]),
    ("torch_compile with inductor on the CPU (wrong gradients there)", c_inductor_on_cpu,
     ["dynamo_backend", "inductor", "wrong gradients", "aot_eager"]),
    ("plot of a folder without metrics", c_plot_no_metrics, ["metrics.jsonl"]),
    ("folders 0_char / -5_char", c_repeats_below_one, ["0_char", "-5_char", "repeats must be 1 or more"]),
    ("output_name with a folder in it", c_output_name_path, ["output_name", "../escape", "plain file name"]),
    ("output folder inside the data folder", c_output_in_data, ["output_dir", "inside the data folder"]),
    ("output folder in use by a running run", c_output_locked, ["another lorakit run", "pid", "another output_dir"]),
    ("CosineAnnealingLR T_max=0 (train)", c_t_max_zero, ["lr_scheduler_args", "T_max", "ZeroDivisionError"]),
    ("CosineAnnealingLR T_max=0 (plan)", c_plan_t_max_zero, ["lr_scheduler_args", "T_max"]),
    ("--set value of the wrong type", c_set_wrong_type, ["--set network_dim=abc", "network_dim", "valid integer"]),
    ("single file of an unknown architecture", c_single_file_unknown_width,
     ["tiny.safetensors", "context width", "diffusers folder"]),
    ("doctor --resolution not a size", c_doctor_resolution, ["--resolution", "abc", "W,H"]),
    ("plot of a metrics.jsonl with a broken line", c_plot_broken_line, ["metrics.jsonl", "line 2", "not JSON"]),
]


@pytest.mark.parametrize("case,setup,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_message(case, setup, words, tmp_path, tiny_model_dir, capsys):
    if setup is c_inductor_on_cpu and torch.cuda.is_available():
        pytest.skip("a CUDA machine trains with inductor")
    if setup is c_inductor_on_cpu and torch.__version__ >= INDUCTOR_CPU_RIGHT_FROM:
        pytest.skip(f"torch {torch.__version__} trains with inductor on the CPU")
    argv = setup(tmp_path, tiny_model_dir)
    if argv[0] == "train":
        argv.append("--quiet")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert "fix:" in err, err  # every answer says what to do
    if setup is c_output_exists:
        assert (tmp_path / "o" / "last.safetensors").read_bytes() == b"precious"


# cases that need a run, a signal or a file system: (case, what lorakit answers, the test that checks it)
RUNTIME = [
    ("disk full while saving the adapter (safetensors' SafetensorError)",
     "exit 2: `cannot write last.safetensors: no space left on the device (needs N, M free)`; the old file "
     "stays, no temporary left", "test_disk_errors.py::test_adapter_safetensors_full_disk"),
    ("disk full while saving a state (torch's zip writer: `unexpected pos`)",
     "exit 2 naming the state folder and the bytes; no `.tmp` folder, older states kept",
     "test_disk_errors.py::test_state_torch_zip_writer_short_write"),
    ("permission denied / read-only while saving", "exit 2, `permission denied` / `read-only`, fix: make the "
     "folder writable", "test_disk_errors.py::test_state_json_permission_denied"),
    ("disk full while writing a sample, a plot, metrics.jsonl or a latent cache entry",
     "exit 2 naming that file; no partial file", "test_disk_errors.py::test_sample_png_full_disk"),
    ("a real 300 KiB tmpfs as --output", "exit 2; every adapter and state left there is whole",
     "test_disk_errors.py::test_training_into_a_full_tmpfs_exits_2_and_leaves_only_whole_files"),
    ("temporaries left by kill -9", "removed at the next start (a warning lists them)",
     "test_disk_errors.py::test_stale_temporaries_of_a_killed_run_are_cleaned"),
    ("a second run into the same output folder", "exit 2: `another lorakit run (pid N on HOST, started T)`",
     "test_run_safety.py::test_cli_second_run_exits_2"),
    ("a lock left by a killed run", "taken over with a warning",
     "test_run_safety.py::test_a_dead_owner_is_taken_over_with_a_warning"),
    ("SIGTERM (docker stop, Slurm, spot reclaim; the UI's Stop)",
     "the step finishes, adapter and state are saved, exit 143",
     "test_run_safety.py::test_sigterm_saves_adapter_and_state"),
    ("SIGHUP (a closed terminal)", "as SIGTERM, exit 129",
     "test_run_safety.py::test_sighup_is_handled_as_sigterm_with_its_own_exit_code"),
    ("files and other users", "files follow the umask (0644 under 022)",
     "test_run_safety.py::test_every_file_follows_the_umask_and_resume_names_all_changes"),
    ("--resume with changed settings", "exit 2 listing every unsafe change at once; learning rates, sample "
     "and save settings change with a warning naming each",
     "test_run_safety.py::test_every_file_follows_the_umask_and_resume_names_all_changes"),
    ("--resume on changed data (files, captions, repeats)", "exit 2 naming each change; "
     "`--resume-changed-data` accepts it with a warning",
     "test_run_safety.py::test_every_file_follows_the_umask_and_resume_names_all_changes"),
    ("--quiet", "hides only the progress bar; warnings still reach stderr",
     "test_bad_input.py::test_quiet_still_prints_warnings"),
    ("plot of a metrics.jsonl whose last line was cut short", "exit 0, the line left out with a warning",
     "test_cli_bad_args.py::test_bad_arguments_never_exit_1"),
    ("`lorakit config keys | head`", "exit 141, nothing on stderr",
     "test_cli_bad_args.py::test_config_keys_into_a_closed_pipe_exits_quietly"),
    ("every command with bad arguments (tests/test_cli_bad_args.py)", "never exit 1: exit 2 with a reason, "
     "or 0 with a warning", "test_cli_bad_args.py::test_bad_arguments_never_exit_1"),
]


def test_runtime_cases_name_real_tests():
    for _, _, ref in RUNTIME:
        file, name = ref.split("::")
        assert f"def {name}(" in (ROOT / "tests" / file).read_text(encoding="utf-8"), ref


def test_quiet_still_prints_warnings(tmp_path, tiny_model_dir, capsys):
    data = good_data(tmp_path)
    (data / "notes").mkdir()  # a folder without <repeats>_: a warning
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--quiet", "--set", "resolution=64", "--set", "max_train_steps=1", "--set", "network_dim=2"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "warning: train_data_dir: skipped folders without a <repeats>_ prefix: notes" in err
    assert "samples/epoch" not in err and "step/s" not in err  # no progress bar (nor its plan line)


def render_table() -> str:
    lines = ["# Bad input and what lorakit answers", "",
             "Each row is a test in `tests/test_bad_input.py`: the command exits with code 2 and the message",
             "names the file and key where it can, and says how to fix it. Checks that need no model run",
             "before the model is loaded.", "", "| case | the message contains |", "|---|---|"]
    for case, _, words in CASES:
        lines.append(f"| {case} | {', '.join('`' + w.replace('|', '/') + '`' for w in words)} |")
    lines += ["", "## During a run, on disk, and on every command", "",
              "Each row names the test that checks it.", "", "| case | lorakit answers | test |", "|---|---|---|"]
    for case, answer, ref in RUNTIME:
        lines.append(f"| {case} | {answer} | `tests/{ref}` |")
    return "\n".join(lines) + "\n"


def test_docs_table_is_current():
    doc = ROOT / "docs" / "bad-input.md"
    assert doc.read_text(encoding="utf-8") == render_table(), \
        "docs/bad-input.md is stale: write render_table() of tests/test_bad_input.py into it"
