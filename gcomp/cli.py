"""The ``gcomp`` command line."""

import argparse
import importlib
import os
import platform
import signal
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
    # the library's own dependencies, what `gcomp train` (the main job) needs on top, then the optional MPI binding
    for name, module in (("numpy", "numpy"), ("numba", "numba"), ("torch", "torch"), ("zstandard", "zstandard"),
                         ("scikit-learn", "sklearn"), ("matplotlib", "matplotlib"), ("mpi4py", "mpi4py")):
        version, exc = _version_of(module)
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


def _value(value):
    """A parameter value as a spec string writes it."""
    if value is None:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _yes_no(value):
    return "-" if value is None else ("yes" if value is True else "no" if value is False else str(value))


def _otherwise(info, attr, show):
    """`` (no with rescale=false)``: the parameter values that change a declared property."""
    changes = info["depends"].get(attr)
    if not changes:
        return ""
    return " (" + "; ".join(f"{show(result)} with {key}={_value(value)}" for key, value, result in changes) + ")"


def describe_lines(info):
    """The lines ``gcomp list NAME`` prints for :func:`gcomp.compressors.describe`'s dict."""
    lines = [f"{info['name']}: {info['description']}"]
    params = info["params"]
    if params:
        rows = [(p["name"], p["type"], _value(p["default"]), p["allowed"], p["help"]) for p in params]
        widths = [max(len(r[i]) for r in rows + [("parameter", "type", "default", "allowed", "")]) for i in range(4)]
        header = ("parameter", "type", "default", "allowed", "")
        for row in [header] + rows:
            lines.append(("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:4], widths, strict=True))
                          + "  " + row[4]).rstrip())
        lines += [f"  {p['name']} is required: {p['hint']}" for p in params if p["required"] and p["hint"]]
    else:
        lines.append("  parameters: none")
    lines.append(f"  error feedback by default: {info['default_feedback'] or '-'}"
                 f"{_otherwise(info, 'default_feedback', str)}")
    lines.append(f"  unbiased: {_yes_no(info['unbiased'])}{_otherwise(info, 'unbiased', _yes_no)}")
    lines.append(f"  linear (summable on the wire): {_yes_no(info['linear'])}{_otherwise(info, 'linear', _yes_no)}")
    codec = "none (not on the wire)" if info["codec_id"] is None else str(info["codec_id"])
    lines.append(f"  wire codec id: {codec}")
    return lines


def _train_baselines():
    """``gcomp train``'s torch baselines (not gcomp compressors), or () if the train module is missing."""
    try:
        from .train import BASELINES
    except ImportError:  # pragma: no cover - train module missing
        return ()
    from .compressors import REGISTRY

    return tuple(b for b in BASELINES if b not in REGISTRY)


def _cmd_list(args):
    from .compressors import describe, list_compressors
    from .errors import ConfigError

    if args.names:
        infos = []
        for name in args.names:
            try:
                infos.append(describe(name))
            except ConfigError as exc:
                note = ""
                if name in _train_baselines():
                    note = f" ({name} is a torch DDP baseline of gcomp train, not a gcomp compressor)"
                print(f"gcomp list: {exc}{note}", file=sys.stderr)
                return 2
        print("\n\n".join("\n".join(describe_lines(info)) for info in infos))
        return 0
    names = list_compressors()
    width = max(len("name"), *(len(n) for n in names))
    print(f"{'name':<{width}}  {'feedback':<8}  description")
    for name, description in names.items():
        print(f"{name:<{width}}  {describe(name)['default_feedback'] or '-':<8}  {description}")
    print("\nfeedback: the error feedback used by default (error_feedback='auto') with the default parameters:\n"
          "none for unbiased compressors, residual for biased ones.  gcomp list NAME shows a compressor's\n"
          "parameters (type, default, allowed values) and properties.")
    baselines = _train_baselines()
    if baselines:
        print(f"gcomp train also compares torch DDP baselines, not gcomp compressors: {', '.join(baselines)}.")
    return 0


def _cmd_train(args):
    from .train import DEFAULT_COMPRESSOR, TrainOptions, summary_table, train

    # --model's default follows the dataset: the MLP for the digits, the 1-D CNN for MNIST-1D's signals
    model = args.model or ("cnn1d" if args.dataset.partition(":")[0] == "mnist1d" else "mlp")
    workers = args.workers if args.workers is not None or args.launched_by else 4
    opts = TrainOptions(
        workers=workers, launched_by=args.launched_by, compressors=args.compressor or [DEFAULT_COMPRESSOR], epochs=args.epochs, model=model,
        hidden=args.hidden, backend=args.backend, link=" ".join(args.link or ["20mbit"]), groups=args.groups,
        emulate=args.emulate,
        target_accuracy=args.target_accuracy, out=args.out, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        error_feedback=args.error_feedback, timeout=args.timeout, progress=not args.quiet, start_iter=args.start_iter,
        architecture=(args.architecture or ["centralized"])[0] if len(args.architecture or []) < 2 else args.architecture,
        topology=args.topology, gossip_gamma=args.gossip_gamma,
        gossip_every=args.gossip_every, dataset=args.dataset,
        clients=args.clients, fraction=args.fraction, rounds=args.rounds, local_epochs=args.local_epochs,
        non_iid=args.non_iid, local_dp=args.local_dp, downlink=args.downlink,
    )
    try:
        results = train(opts)
    except (ValueError, RuntimeError) as exc:
        print(f"gcomp train: {exc}", file=sys.stderr)
        return 2
    if results.get("rank", 0) != 0:  # --launched-by: worker 0 prints the table and writes results.json
        print(f"gcomp train: worker {results['rank']} done; worker 0 (on {results['header']['hosts'][0]}) wrote "
              "results.json")
        return 0
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
    p_list = sub.add_parser(
        "list", help="list the registered compressors, or show NAME's parameters and properties",
        description="Without NAME: every registered compressor, its default error feedback and a description.  "
        "With NAME(s): each one's parameters (type, default, allowed values), default error feedback, "
        "whether it is unbiased and linear, and its wire codec id.",
    )
    p_list.add_argument("names", nargs="*", metavar="NAME", help="compressor name(s), e.g. topk qsgd")
    p_list.set_defaults(func=_cmd_list)

    p_train = sub.add_parser(
        "train",
        help="train on the digits (or MNIST-1D) data across N local workers, comparing compressors on edge links",
        description="Train a model on scikit-learn's digits data (or MNIST-1D with --dataset mnist1d) across N local "
        "workers (torch DDP on gloo, or MPI), "
        "once per --compressor, and report accuracy, time to the target accuracy, bytes, the split of time and "
        "modelled energy.  Times are modelled from the bytes actually sent through --link, or measured on "
        "shaped links with --emulate.",
    )
    p_train.add_argument("--workers", type=int, default=None,
                         help="number of workers (default 4; with --launched-by: the launcher's world size)")
    p_train.add_argument("--compressor", action="append", metavar="SPEC",
                         help="a gcomp compressor spec (e.g. topk:ratio=0.01) or a baseline: none, torch-fp16, "
                              "torch-powersgd; repeat to compare (default dgc:ratio=0.01)")
    p_train.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    p_train.add_argument("--dataset", default="digits", metavar="DATASET",
                         help="digits (scikit-learn's 8x8 digits, 1438 training samples; the fast default) or mnist1d "
                              "(MNIST-1D, 4000 training signals of length 40, generated by the mnist1d package, no "
                              "download, cached under --out/data/; mnist1d:samples=N,seed=S changes the generator's "
                              "sample count and seed, default 5000 and 42, the paper's set)")
    p_train.add_argument("--model", choices=["mlp", "cnn", "cnn1d"], default=None,
                         help="mlp (~1.1M parameters on the digits), cnn (2-D, digits only) or cnn1d (1-D CNN, ~0.7M "
                              "parameters on mnist1d) (default mlp for digits, cnn1d for mnist1d)")
    p_train.add_argument("--hidden", type=int, default=1024, help="hidden width (default 1024)")
    p_train.add_argument("--backend", choices=["ddp", "mpi"], default="ddp", help="torch DDP on gloo, or mpiexec (default ddp)")
    p_train.add_argument("--link", action="append", metavar="SPEC",
                         help="uplink per worker: RATE[/LATENCY], or a comma list, one per worker (default 20mbit); "
                              "with --groups: intra=SPEC (each worker's uplink inside its group) and inter=SPEC (each "
                              "group's uplink to the other groups, shared by its members), e.g. --link intra=1gbit "
                              "--link inter=20mbit")
    p_train.add_argument("--groups", default=None, metavar="GxS|RANKS",
                         help="two-level (hybrid) network: G groups of S consecutive ranks (2x2) or rank lists split "
                              "by '/' (0,2/1,3), covering all --workers; links as --link intra=/inter= (modelled as a "
                              "ring whose edges between groups share their group's uplink, or emulated with "
                              "--emulate); recorded in results.json and each run's config.json ('groups')")
    p_train.add_argument("--emulate", action="store_true",
                         help="run each worker in a network namespace with its uplink shaped by tc tbf (needs root); "
                              "with --groups each group's traffic to other groups also passes its shaped group uplink; "
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
    p_train.add_argument("--architecture", choices=["centralized", "decentralized", "hybrid", "federated"],
                         action="append",
                         help="centralized: gradients averaged over all workers every step (DDP or MPI allreduce); "
                              "decentralized: each worker gossips its parameters with its --topology neighbours "
                              "(CHOCO-SGD with the --compressor, or exact gossip with none; torch's hooks refused); "
                              "accuracy is rank 0's model; hybrid: DDP with gcomp's hierarchical hook over --groups "
                              "(dense inside each group, the compressor between the group leaders; none: plain DDP); "
                              "repeat to compare architectures side by side in one table (every --compressor runs "
                              "under each); federated (alone): FedAvg on Flower's simulation engine, --clients "
                              "each holding a partition of the data, --fraction of them per round sending their "
                              "update through gcomp's Flower mod (needs gcomp[flower]; --workers, --epochs, --backend "
                              "and --emulate do not apply) (default centralized)")
    p_train.add_argument("--topology", default="ring",
                         help="decentralized only: ring, torus, torus:RxC, exponential, complete or star (default ring)")
    p_train.add_argument("--gossip-gamma", type=float, default=None, metavar="GAMMA",
                         help="decentralized only: consensus step size in (0, 1] (default 0.1 for CHOCO, measured "
                              "for topk:ratio=0.01 on the digits MLP; 1 for exact gossip)")
    p_train.add_argument("--gossip-every", type=int, default=1, metavar="H",
                         help="decentralized only: gossip every H-th step, local SGD in between (default 1)")
    p_train.add_argument("--clients", type=int, default=20,
                         help="federated only: simulated clients, each with its own partition (default 20)")
    p_train.add_argument("--fraction", type=float, default=0.25,
                         help="federated only: fraction of the clients sampled each round, at least one (default 0.25)")
    p_train.add_argument("--rounds", type=int, default=20, help="federated only: rounds (default 20)")
    p_train.add_argument("--local-epochs", type=int, default=5,
                         help="federated only: epochs of local SGD per round on a client's partition (default 5)")
    p_train.add_argument("--non-iid", type=float, default=None, metavar="ALPHA",
                         help="federated only: split the labels over the clients by Dirichlet(ALPHA) (0.1: few classes "
                              "per client; 100: nearly IID) (default: IID)")
    p_train.add_argument("--downlink", default=None, metavar="SPEC",
                         help="federated only: also compress the global model sent to the clients with this gcomp "
                              "compressor, as differences from a public copy with server-side error feedback "
                              "(default: dense)")
    p_train.add_argument("--local-dp", default=None, metavar="clip=C,epsilon=E[,delta=D,sensitivity=S]",
                         help="federated only: Flower's LocalDpMod on every client (clip the update to norm C, add "
                              "Gaussian noise for (E, D)-DP, D default 1e-5, sensitivity default C), applied before "
                              "gcomp's compression (default: none)")
    p_train.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is abandoned (default 600)")
    p_train.add_argument("--launched-by", choices=["torchrun", "mpiexec"], default=None,
                         help="across boxes: this process is one worker, started with the same options on every box "
                              "by torchrun (--backend ddp: centralized, decentralized, hybrid; e.g. torchrun --nnodes 2 "
                              "--nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m gcomp.cli train "
                              "--launched-by torchrun ...) or by mpiexec -f HOSTFILE (--backend mpi: centralized, "
                              "decentralized); rank 0 gathers every rank's records over the process group and writes "
                              "results.json into its --out; times are modelled from --link, wall times are the real "
                              "network's; no --emulate (see docs/deploy.md)")
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
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        # Ctrl-C: one line, not a traceback, and 128 + the signal as shells report it (130 for SIGINT).  A
        # KeyboardInterrupt that carries ``signum`` (gcomp.train's SIGTERM/SIGHUP) names its signal.  On a
        # terminal the line starts below a progress bar that was drawn without a newline.
        try:
            sig = signal.Signals(getattr(exc, "signum", signal.SIGINT))
        except (ValueError, TypeError):
            sig = signal.SIGINT
        what = "" if sig == signal.SIGINT else f" by {sig.name}"
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}gcomp {args.command}: interrupted{what}", file=sys.stderr)
        return 128 + int(sig)


if __name__ == "__main__":
    sys.exit(main())
