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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gcomp",
        description="gcomp: gradient compression for distributed training on edge clusters.",
    )
    parser.add_argument("--version", action="version", version=f"gcomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print versions of gcomp and its dependencies, Numba threading and cache")
    p_info.set_defaults(func=_cmd_info)
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
