"""`lorakit` command line. Exit codes: 0 success, 2 bad config or input, 1 internal error."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .console import quiet_libraries
from .errors import UserError


def _config_from_args(args: argparse.Namespace):
    """The validated config; the keys its file had that lorakit ignores are printed, one line each."""
    from .config.load import load

    cli_values = {
        "pretrained_model_name_or_path": getattr(args, "model", None),
        "train_data_dir": getattr(args, "data", None),
        "reg_data_dir": getattr(args, "reg_data", None),
        "output_dir": getattr(args, "output", None),
    }
    loaded = load(args.config, args.set, cli_values, fmt=getattr(args, "format", "auto"))
    for key, why in loaded.ignored:
        print(f"lorakit: ignored {key}: {why}", file=sys.stderr)
    return loaded.cfg


def cmd_train(args: argparse.Namespace) -> int:
    from . import signals
    from .monitors import MetricsJsonl, Plots, ProgressBar, Warnings, loggers_for
    from .train.loop import train

    cfg = _config_from_args(args)
    if not cfg.output_dir:
        raise UserError("no output folder given", key="output_dir", fix="pass --output DIR")
    out = Path(cfg.output_dir)
    subs = [MetricsJsonl(out / "metrics.jsonl"), *loggers_for(cfg, out), Plots(out), Warnings()]
    if not args.quiet:
        subs.append(ProgressBar())
    with signals.handled():  # Ctrl-C, SIGTERM and SIGHUP end the step in progress, then save
        result = train(cfg, subs, overwrite=args.overwrite, resume=args.resume,
                       resume_changed_data=args.resume_changed_data)
    steps = f"{result.steps} step" + ("" if result.steps == 1 else "s")
    print(f"lorakit: wrote {result.output_file} ({steps}, seed {result.seed})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from .config.export import to_kohya_json, to_toml

    cfg = _config_from_args(args)
    print(to_kohya_json(cfg) if args.as_ == "kohya-json" else to_toml(cfg), end="")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    from .config.schema import TrainConfig, field_section

    for name, f in TrainConfig.model_fields.items():
        print(f"{name:34s} [{field_section(name)}] default {json.dumps(f.default)}\n    {f.description}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .plot import plot_run

    metrics = Path(args.output_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError("no metrics.jsonl here", file=str(metrics), fix="give the output_dir of a lorakit run")
    warnings: list[str] = []
    for path in plot_run(args.output_dir, warnings):
        print(path)
    for w in warnings:
        print(f"lorakit: warning: {w}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .train.plan import plan_for_config

    cfg = _config_from_args(args)
    print("\n".join(plan_for_config(cfg).lines(cfg)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorakit", description="Train Stable Diffusion adapters.")
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", nargs="?", help="lorakit .toml, sd-scripts .toml or kohya_ss .json config")
        sp.add_argument("--format", default="auto", choices=("auto", "lorakit", "kohya", "sd-scripts"),
                        help="how to read CONFIG: auto (default: .json = kohya_ss GUI; .toml = sd-scripts when it "
                             "has network_module, dataset_config or sd-scripts' tables, else lorakit) or forced")
        sp.add_argument("--model", help="checkpoint: diffusers folder or .safetensors/.ckpt")
        sp.add_argument("--data", help="train_data_dir")
        sp.add_argument("--reg-data", dest="reg_data", help="reg_data_dir")
        sp.add_argument("--output", help="output_dir")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")

    t = sub.add_parser("train", help="train an adapter")
    config_args(t)
    t.add_argument("--overwrite", action="store_true", help="replace existing adapter files of this name")
    t.add_argument("--quiet", action="store_true", help="no progress bar (warnings and errors still print)")
    t.add_argument("--resume", nargs="?", const="auto", default=None, metavar="STATE_DIR",
                   help="continue from the newest state in the output folder, or from STATE_DIR")
    t.add_argument("--resume-changed-data", action="store_true",
                   help="with --resume: accept a dataset whose files, captions or repeats changed since the state")
    t.set_defaults(fn=cmd_train)

    pl = sub.add_parser("plot", help="write loss / lr / d*lr PNG plots of a run")
    pl.add_argument("output_dir", help="the run's output folder (holding metrics.jsonl)")
    pl.set_defaults(fn=cmd_plot)

    pn = sub.add_parser("plan", help="print images, batches, steps, epochs and warmup of a config (no model)")
    config_args(pn)
    pn.set_defaults(fn=cmd_plan)

    dr = sub.add_parser("doctor", help="check a dataset folder: captions, tags, duplicates, sizes, buckets")
    dr.add_argument("data_dir", help="the folder holding <repeats>_<name> subfolders")
    dr.add_argument("--reg_data_dir", default=None)
    dr.add_argument("--caption_extension", default=".txt")
    dr.add_argument("--resolution", default="512", help="training size 'W,H' or one number")
    dr.set_defaults(fn=cmd_doctor)

    ins = sub.add_parser("inspect", help="describe an adapter file: algorithm, dims/alphas, size, metadata, "
                         "which UIs load it")
    ins.add_argument("file", help="adapter .safetensors")
    ins.set_defaults(fn=cmd_inspect)

    ui = sub.add_parser("ui", help="a local web app to set up, run and watch training (docs/ui.md)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs a token)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--root", action="append", default=[], metavar="DIR",
                    help="a folder the UI may browse and write under (repeatable; default: . and ~)")
    ui.add_argument("--token", default=None, help="access token (generated and printed for a non-loopback host)")
    ui.add_argument("--state-dir", default=None, help="where the run list is kept (default ~/.cache/lorakit/ui)")
    ui.set_defaults(fn=cmd_ui)

    c = sub.add_parser("config", help="show the resolved config or list keys")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved config (ignored keys of the file go to stderr)")
    config_args(show)
    show.add_argument("--as", dest="as_", default="toml", choices=("toml", "kohya-json"),
                      help="toml (default): a lorakit TOML that `lorakit train` reads; kohya-json: a kohya_ss "
                           "GUI JSON (settings without a GUI field go into additional_parameters)")
    show.set_defaults(fn=cmd_config_show)
    keys = csub.add_parser("keys", help="list every config key with its default and help")
    keys.set_defaults(fn=cmd_config_keys)
    return p


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui.app import serve

    return serve(args.host, args.port, args.root or [".", str(Path.home())], args.token, args.state_dir)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import run

    print(run(args.file))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    try:
        parts = [int(x) for x in str(args.resolution).replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if not parts or len(parts) > 2 or min(parts) < 8:
        raise UserError(f"--resolution {args.resolution!r} is not a size", key="--resolution",
                        fix="give one number (512) or W,H (512,768)")
    res = (parts[0], parts[-1])
    ext = args.caption_extension if args.caption_extension.startswith(".") else "." + args.caption_extension
    report = diagnose(args.data_dir, reg_data_dir=args.reg_data_dir, caption_extension=ext, resolution=res)
    print(report.render())
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.fn(args)
    except UserError as e:
        print(f"lorakit: error: {e.format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from .signals import Terminated

        if isinstance(e, Terminated) and e.name != "SIGINT":
            print(f"lorakit: stopped by {e.name}", file=sys.stderr)
            return e.exit_code
        print("lorakit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lorakit config keys | head`: the reader left; say nothing more
        _silence_stdout()
        return 141
    except Exception:  # an internal error: show it all, exit 1
        traceback.print_exc()
        print("lorakit: internal error (a bug in lorakit, please report it with the trace above)",
              file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
