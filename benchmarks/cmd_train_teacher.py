"""``dfkd train-teacher``: train (or fetch from the cache) an ANN teacher with the recipe."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher", help="train an ANN teacher with the documented recipe (cached)",
        description="Train teacher MODEL on DATASET with the recipe of benchmarks/teachers.py "
                    "(SGD 0.1, momentum 0.9, wd 5e-4, batch 128, cosine, crop+flip) and cache the "
                    "checkpoint under $DFKD_CACHE/teachers (default ~/.cache/stars-dfkd/teachers), "
                    "keyed by (dataset, model, recipe, seed). A second call returns the cached one.")
    p.add_argument("--dataset", required=True, help="a registered dataset (dfkd list datasets)")
    p.add_argument("--model", required=True, help="a registered teacher (dfkd list teachers)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's for (dataset, model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs network)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--cache-dir", default=None, help="teacher cache directory (default: see above)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N random images (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .teachers import accuracy_text, train_teacher

    _, info = train_teacher(args.dataset, args.model, epochs=args.epochs, seed=args.seed,
                            data_root=args.data_root, download=args.download, cache_dir=args.cache_dir,
                            device=args.device, progress=not args.quiet, train_subset=args.train_subset)
    how = ("from the cache" if info.get("cached")
           else f"trained in {info['train_seconds']:.0f} s on {info.get('device', '?')}")
    print(f"teacher {args.model} on {args.dataset} (seed {args.seed}, {info['recipe']['epochs']} epochs): "
          f"{accuracy_text(info)} ({how})")
    print(f"checkpoint: {info['checkpoint']}")
    return 0
