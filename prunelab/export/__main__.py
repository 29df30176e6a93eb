"""``python -m prunelab.export RUN_DIR``: compact a saved run's model, export it, measure.

Writes ``RUN_DIR/export/`` (``export.json`` and each backend's files: ``model/``, ``model.onnx``
by default); see docs/compaction.md.
Exit codes: 0 done, 1 the export failed its logit check or could not run, 2 bad arguments (a
RUN_DIR without a saved model included), each error one line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prunelab.export.backends import BACKENDS, backend_classes
from prunelab.export.run_dir import DEFAULT_BACKENDS, ExportError, export_run, model_dir_of


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return sizes


def _backends(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        classes = backend_classes(names)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    # The int8 model is made by a run's quant stage, from its calibration data: none here.
    needing = [cls.name for cls in classes if cls.needs_int8]
    if needing:
        raise argparse.ArgumentTypeError(f"{', '.join(needing)} runs the int8 model of the compacted one, which only a "
                                         "run with export=compact and quant=dynamic|static makes")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prunelab.export",
        description="Remove pruned attention heads and FFN neurons from RUN_DIR/model, export it with each backend, "
        "check that the logits match and measure latency; writes RUN_DIR/export/.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a prunelab run directory (holding model/) or a model directory")
    p.add_argument("--output", default=None, help="where to write (default: RUN_DIR/export)")
    p.add_argument("--runs", type=int, default=20, help="timed forward passes per measurement, median taken (0: no latency)")
    p.add_argument("--batch-sizes", type=_sizes, default=(1, 32), help="comma-separated batch sizes to time (default 1,32)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the timed inputs (default 128)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch.onnx exporter")
    p.add_argument("--backends", type=_backends, default=DEFAULT_BACKENDS,
                   help=f"comma-separated export backends among {', '.join(BACKENDS)} (default "
                   f"{','.join(DEFAULT_BACKENDS)}; those running the int8 model only in a run with quant=dynamic|static)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed max |logit difference|")
    # One line, as for every other bad input, instead of argparse's usage block.
    p.error = lambda message: p.exit(2, f"{p.prog}: error: {message} (see --help)\n")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.runs < 0 or args.seq_len < 2 or args.threads < 1:
        print("prunelab.export: --runs must be >= 0, --seq-len >= 2, --threads >= 1", file=sys.stderr)
        return 2
    try:
        model_dir_of(Path(args.run_dir))  # bad input, told apart from an export that fails (exit 1)
    except ExportError as error:
        print(f"prunelab.export: error: {error}", file=sys.stderr)
        return 2
    try:
        report = export_run(
            args.run_dir, args.output, runs=args.runs, batch_sizes=args.batch_sizes, sequence=args.seq_len,
            threads=args.threads, backends=args.backends, exporter=args.exporter, tolerance=args.tolerance,
        )
    except ExportError as error:
        print(f"prunelab.export: {error}", file=sys.stderr)
        return 1
    params = report["parameters"]
    print(
        f"prunelab.export: {params['before']:,} -> {params['after']:,} parameters; "
        f"max |logit diff| {report['max_abs_logit_diff']:.2g}; {report['note'].split(';')[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
