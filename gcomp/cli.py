"""The ``gcomp`` command line."""

import argparse
import importlib
import os
import platform
import sys

from . import __version__


def _version_of(module_name):
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure as "not installed"
        return None, exc
    return getattr(module, "__version__", "unknown"), None


def info_lines():
    """The lines ``gcomp info`` prints: versions, Numba threading and cache."""
    lines = [f"gcomp          {__version__}", f"python         {platform.python_version()} ({sys.executable})"]
    for name in ("numpy", "numba", "torch", "zstandard", "mpi4py"):
        version, exc = _version_of(name)
        lines.append(f"{name:<14} {version if version else 'not installed'}")
    version, exc = _version_of("mpi4py")
    if version:
        try:
            from mpi4py import MPI

            lib = MPI.Get_library_version().strip().splitlines()[0]
            lines.append(f"MPI library    {lib}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"MPI library    unavailable ({exc})")
    else:
        lines.append("MPI library    not installed (pip install 'gcomp[mpi]')")
    import numba

    from .kernels import config

    lines.append(f"numba threads  {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS)")
    lines.append(f"threading      {config.threading_layer()}")
    lines.append(f"kernel cache   {'on' if config.CACHE else 'off'} (GCOMP_NUMBA_CACHE), dir {config.cache_dir()}")
    lines.append(f"cpu            {platform.machine()}, {os.cpu_count()} logical cores")
    if _version_of("torch")[0]:
        import torch

        cuda = "available" if torch.cuda.is_available() else "not available"
        lines.append(f"torch threads  {torch.get_num_threads()}, cuda {cuda}")
    return lines


def _cmd_info(args):
    print("\n".join(info_lines()))
    return 0


def _cmd_list(args):
    from .compressors import compressor, list_compressors

    print(f"{'name':<10} {'feedback':<9} description")
    for name, description in list_compressors().items():
        try:
            default = compressor(name).default_feedback
        except Exception:  # noqa: BLE001 - a compressor that needs parameters has no default instance
            default = "-"
        print(f"{name:<10} {default:<9} {description}")
    print("\nfeedback: the error feedback used by default (error_feedback='auto'): none for unbiased compressors,\n"
          "residual for biased ones")
    return 0


def _cmd_train(args):
    from .train import DEFAULT_COMPRESSOR, TrainOptions, summary_table, train

    opts = TrainOptions(
        workers=args.workers, compressors=args.compressor or [DEFAULT_COMPRESSOR], epochs=args.epochs, model=args.model,
        hidden=args.hidden, backend=args.backend, link=args.link, emulate=args.emulate,
        target_accuracy=args.target_accuracy, out=args.out, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        error_feedback=args.error_feedback, timeout=args.timeout, progress=not args.quiet, start_iter=args.start_iter,
    )
    try:
        results = train(opts)
    except (ValueError, RuntimeError) as exc:
        print(f"gcomp train: {exc}", file=sys.stderr)
        return 2
    print(summary_table(results))
    print(f"\nresults: {os.path.join(opts.out, 'results.json')}")
    for path in results.get("plots", []):
        print(f"plot:    {path}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gcomp",
        description="gcomp: gradient compression for distributed training on edge clusters.",
    )
    parser.add_argument("--version", action="version", version=f"gcomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print versions of gcomp and its dependencies, Numba threading and cache")
    p_info.set_defaults(func=_cmd_info)
    p_list = sub.add_parser("list", help="list the registered compressors")
    p_list.set_defaults(func=_cmd_list)

    p_train = sub.add_parser(
        "train",
        help="train on the embedded digits data across N local workers, comparing compressors on edge links",
        description="Train a model on scikit-learn's digits data across N local workers (torch DDP on gloo, or MPI), "
        "once per --compressor, and report accuracy, time to the target accuracy, bytes, the split of time and "
        "modelled energy.  Times are modelled from the bytes actually sent through --link, or measured on "
        "shaped links with --emulate.",
    )
    p_train.add_argument("--workers", type=int, default=4, help="number of workers (default 4)")
    p_train.add_argument("--compressor", action="append", metavar="SPEC",
                         help="a gcomp compressor spec (e.g. topk:ratio=0.01) or a baseline: none, torch-fp16, "
                              "torch-powersgd; repeat to compare (default dgc:ratio=0.01)")
    p_train.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    p_train.add_argument("--model", choices=["mlp", "cnn"], default="mlp", help="model (default mlp, ~1.1M parameters)")
    p_train.add_argument("--hidden", type=int, default=1024, help="hidden width (default 1024)")
    p_train.add_argument("--backend", choices=["ddp", "mpi"], default="ddp", help="torch DDP on gloo, or mpiexec (default ddp)")
    p_train.add_argument("--link", default="20mbit",
                         help="uplink per worker: RATE[/LATENCY], or a comma list, one per worker (default 20mbit)")
    p_train.add_argument("--emulate", action="store_true",
                         help="run each worker in a network namespace with its uplink shaped by tc tbf (needs root); "
                              "times are then measured")
    p_train.add_argument("--target-accuracy", type=float, default=0.95, help="test accuracy to reach (default 0.95)")
    p_train.add_argument("--out", default="gcomp-train", help="output directory (default ./gcomp-train)")
    p_train.add_argument("--seed", type=int, default=0, help="seed for data order, model init and compressors")
    p_train.add_argument("--batch-size", type=int, default=32, help="per-worker batch size (default 32)")
    p_train.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05, momentum 0.9)")
    p_train.add_argument("--error-feedback", default="auto", choices=["auto", "residual", "ef21", "dgc", "none"],
                         help="error feedback for gcomp compressors (default auto: none for unbiased compressors, "
                              "residual for biased ones)")
    p_train.add_argument("--start-iter", type=int, default=None,
                         help="dense warm-up iterations before compressing (default: each hook's minimum, "
                              "1 for gcomp, 2 for torch-powersgd)")
    p_train.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is abandoned (default 600)")
    p_train.add_argument("--quiet", action="store_true", help="no progress bar")
    p_train.set_defaults(func=_cmd_train)

    try:
        from .train.emulate import add_emulate_arguments, cmd_emulate
    except ImportError:  # pragma: no cover - emulation module missing
        return parser
    p_emu = sub.add_parser("emulate", help="run a command once per worker, each in a network namespace behind a shaped uplink",
                           description="Run CMD once per worker, each in its own Linux network namespace whose uplink "
                           "is shaped with tc tbf (needs root).  Usage: gcomp emulate --workers 4 --link 20mbit -- CMD ...")
    add_emulate_arguments(p_emu)
    p_emu.set_defaults(func=cmd_emulate)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
