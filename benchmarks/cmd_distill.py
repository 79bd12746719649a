"""``dfkd distill``: one distillation job (teacher -> student on a synthesizer's transfer set).

Config precedence (later wins): defaults < ``--config FILE.toml`` < flags < ``--set``.
Writes ``OUT/result.json``; exit code 0 when the run succeeded, 1 when it failed (the
row says why), 2 for a configuration error (nothing was computed).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: flag attribute -> key of the [run] section
RUN_FLAGS = {
    "dataset": "dataset", "teacher": "teacher", "student": "student", "synthesizer": "synthesizer",
    "regularizer": "regularizers", "seed": "seed", "device": "device", "data_root": "data_root",
    "T": "T", "teacher_epochs": "teacher_epochs", "train_subset": "train_subset",
    "test_subset": "test_subset", "val_size": "val_size", "precision": "precision",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="distill a teacher into a (spiking) student; writes OUT/result.json",
        description="Distill TEACHER into STUDENT on DATASET with a synthesizer (and regularizers). "
                    "Config precedence: defaults < --config < flags < --set section.key=value.")
    p.add_argument("--dataset", help="registered dataset (default fashion-mnist)")
    p.add_argument("--teacher", help="registered teacher, or MODEL@CHECKPOINT for your own weights "
                                     "(default smallcnn, trained with the recipe and cached)")
    p.add_argument("--student", help="registered student (default spiking_smallcnn)")
    p.add_argument("--synthesizer", help="registered synthesizer (dfkd list synthesizers); required "
                                         "unless the config file sets run.synthesizer")
    p.add_argument("--regularizer", action="append", metavar="NAME",
                   help="attach a registered regularizer (repeatable)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with [run], [distill], [<component>] tables")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set distill.epochs=10 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for result.json")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--data-root", help="where the dataset files are")
    p.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    p.add_argument("--T", type=int, help="time steps of the spiking student (default 4)")
    p.add_argument("--teacher-epochs", type=int, help="epochs when the teacher must be trained "
                                                      "(default: the recipe's)")
    p.add_argument("--train-subset", type=int, help="use N random training images (smoke runs)")
    p.add_argument("--test-subset", type=int, help="evaluate on N random test images")
    p.add_argument("--val-size", type=int, help="carve N labelled validation images out of train")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast of the KD step, synthesis and evaluation (default fp32; bf16 is ~10x "
                        "slower on CPUs without native bf16; fp16 needs CUDA)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard events to OUT/tb/")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and run_id; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def user_config(args: argparse.Namespace) -> dict[str, Any]:
    """The user's config from the file, the flags and the --set overrides (not resolved)."""
    from baselines.config import apply_sets, deep_merge, load_toml
    from baselines.errors import ConfigError
    from baselines.registry import SYNTHESIZERS

    from .names import canonical_names

    user: dict[str, Any] = load_toml(args.config) if args.config else {}
    for sec, val in user.items():
        if not isinstance(val, dict):
            raise ConfigError(f"config file {args.config!r}: {sec} = {val!r} is not a section; every top-level "
                              f"entry must be a table such as [run] or [distill] (write it under one).")
    flags = {key: getattr(args, attr) for attr, key in RUN_FLAGS.items() if getattr(args, attr) is not None}
    if args.download:
        flags["download"] = True
    if args.tensorboard:
        flags["tensorboard"] = True
    flags["progress"] = not args.quiet
    user = deep_merge(user, {"run": flags})
    user = canonical_names(apply_sets(user, args.set))
    if not (user.get("run") or {}).get("synthesizer"):
        raise ConfigError("no synthesizer chosen: pass --synthesizer NAME (or set run.synthesizer in "
                          f"--config). Known synthesizers: {', '.join(SYNTHESIZERS.names())}.")
    return user


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _sec(v: Any) -> str:
    return "-" if v is None else f"{v:.1f} s"


def summary_lines(row: dict[str, Any], path: str | None = None) -> list[str]:
    """A short human-readable table of a result row."""
    regs = ", ".join(r["name"] for r in row.get("regularizers") or []) or "-"
    fr = row.get("firing_rate")
    sops = row.get("sops_per_image")
    teacher_how = ("cached" if row.get("teacher_cached") else
                   f"trained {_sec(row.get('teacher_seconds'))}" if row.get("teacher_seconds") else "loaded")
    rows = [
        ("run_id", row.get("run_id")),
        ("status", row.get("status") + (f" ({row.get('error')})" if row.get("error") else "")),
        ("dataset", f"{row.get('dataset')} (train {row.get('n_train')}, test {row.get('n_test')}"
                    + (f", val {row.get('n_val')}" if row.get("n_val") else "") + ")"),
        ("teacher", f"{row.get('teacher')}  acc {_pct(row.get('teacher_acc'))}  ({teacher_how})"),
        ("student", f"{row.get('student')}  T={row.get('T')}"),
        ("synthesizer", f"{row.get('synthesizer')}  regularizers: {regs}"),
        ("student acc", f"last {_pct(row.get('student_acc'))}  best {_pct(row.get('student_acc_best'))}"
                        + (f"  val {_pct(row.get('val_acc'))}" if row.get("val_acc") is not None else "")),
        ("firing rate", "-" if fr is None else f"{fr:.4f}"),
        ("SOPs/image", "-" if sops is None else f"{sops:.3e}"),
        ("images", f"{row.get('images_synthesized')} synthesized in {_sec(row.get('synthesis_seconds'))}"),
        ("KD", _sec(row.get("distill_seconds"))),
        ("total", f"{_sec(row.get('total_seconds'))}  peak RSS {row.get('peak_rss_mb') or 0:.0f} MiB"
                  f"  device {row.get('device')}"),
    ]
    if path:
        rows.append(("result", path))
    w = max(len(k) for k, _ in rows)
    return [f"{k:<{w}}  {v}" for k, v in rows]


def run(args: argparse.Namespace) -> int:
    from .job import config_hash, resolve_config, run_job
    from .outputs import check_out_dir_writable

    cfg = resolve_config(user_config(args))
    if args.dry_run:
        print(json.dumps(cfg, indent=2))
        print(f"run_id: {config_hash(cfg)}")
        return 0
    check_out_dir_writable(args.out)  # an --out that cannot hold result.json is refused before compute
    row = run_job(cfg, args.out)
    print("\n".join(summary_lines(row, row.get("result_file") or f"{args.out}/result.json")))
    if row.get("save_error"):
        print(f"error: {row['save_error']}.", file=sys.stderr)
        return 1
    if row["status"] != "ok":
        print(f"run failed: {row['error']}", file=sys.stderr)
        return 1
    return 0
