"""``dfkd export RUN_DIR --format nir|onnx|torchscript``: write a run's student (or teacher)
for other tools.

The model is rebuilt from RUN_DIR/result.json (student name, T, neuron, surrogate,
student_args; channels, image size and classes from the row's data_shape) and its weights:
RUN_DIR/student.pt, which every run with an out dir writes (``run.save_student``, default
true; or ``--checkpoint FILE``). Benchmark runs: RUN_DIR is OUT/jobs/<job_id>. NIR needs a
sequential average-pooling student (``spiking_smallcnn_avg``): NIR has no max-pool node.
ONNX and TorchScript take any model. ``pip install 'stars-dfkd[export]'`` installs nir,
snntorch and onnx.
"""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's student (or teacher) as NIR, ONNX or TorchScript",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="output directory of `dfkd distill --out`")
    p.add_argument("--format", required=True, choices=["nir", "onnx", "torchscript"], dest="fmt")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/<model>.nir|.onnx|.torchscript.pt)")
    p.add_argument("--model", default="student", choices=["student", "teacher"],
                   help="which network of the run (default student)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="weights to use instead of RUN_DIR/student.pt (or the run's teacher checkpoint)")
    p.add_argument("--image-size", type=int, help="input size (default: the dataset's, else 32)")
    p.add_argument("--dt", type=float, default=None,
                   help="NIR: seconds per time step, sets the neurons' tau (default 1e-4, snnTorch's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .export import DEFAULT_DT, export_run

    out = args.out
    if out is None and args.fmt == "torchscript":
        out = f"{args.run_dir}/{args.model}.torchscript.pt"
    path, info = export_run(args.run_dir, args.fmt, out, which=args.model, checkpoint=args.checkpoint,
                            image_size=args.image_size, dt=args.dt if args.dt is not None else DEFAULT_DT)
    t = f", T={info['T']}" if info.get("T") else ""
    print(f"wrote {path}: {args.model} {info['name']} ({info['in_channels']}x{info['image_size']}x"
          f"{info['image_size']} -> {info['num_classes']} classes{t}) from {info['checkpoint']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cmd_export ...`` = ``dfkd export ...``."""
    from .cli import main as dfkd

    return dfkd(["export", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
