"""Shared helpers for the gcomp benchmarks: thread setup, timing, the run header, tables and JSON.

This module imports only the standard library at import time, so a benchmark
script can import it and call :func:`set_thread_env` *before* numpy, numba and
torch are imported (``NUMBA_NUM_THREADS`` is read once, when numba is imported).

Timing follows the OSU micro-benchmark recipe: one untimed warm-up call per
function (it JIT-compiles or loads the Numba cache), then repeated timed calls,
and the median is reported.  Functions compared with each other (a kernel and
its baselines) are timed in the same *group*, round-robin: round ``r`` runs
every function of the group once, in an order rotated each round.  Background
load on the machine then hits the kernel and its baselines alike, so the ratios
(speedups) are much steadier than the absolute times.
"""

import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

__all__ = [
    "REPO_ROOT",
    "THREAD_ENV",
    "use_checkout",
    "set_thread_env",
    "early_threads_from_argv",
    "apply_threads",
    "measure_group",
    "cpu_model",
    "git_state",
    "header",
    "write_json",
    "format_table",
    "fmt_time",
    "parse_sizes",
]

#: environment variables that pin the thread count of every runtime we call
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: the repository this file lives in (bench/..)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_checkout() -> bool:
    """Import ``gcomp`` and ``gcomp.kernels`` from this checkout, whatever ``pip install -e`` points at.

    The benchmarks measure the code next to them: an editable install made from
    another clone would otherwise be picked up silently.  Call before importing
    gcomp.  Returns False (and changes nothing) outside a source checkout or when
    gcomp is already imported.  :func:`header` records the paths imported.
    """
    import importlib.abc
    import importlib.util

    mapping = {"gcomp": os.path.join(REPO_ROOT, "gcomp"), "gcomp.kernels": os.path.join(REPO_ROOT, "kernels")}
    if "gcomp" in sys.modules or not all(os.path.isfile(os.path.join(d, "__init__.py")) for d in mapping.values()):
        return False

    class _CheckoutFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            directory = mapping.get(fullname)
            if directory is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])

    sys.meta_path.insert(0, _CheckoutFinder())
    return True


def set_thread_env(threads: int) -> None:
    """Pin Numba, OpenMP, MKL and OpenBLAS to ``threads`` (call before importing numpy/numba/torch)."""
    for name in THREAD_ENV:
        os.environ[name] = str(int(threads))


def early_threads_from_argv(argv=None, default: int = 1) -> int:
    """Read ``--threads N`` / ``--threads=N`` from argv without argparse and pin the thread env.

    The scripts call this at the top, before any heavy import; argparse later
    validates the same option properly.
    """
    argv = sys.argv[1:] if argv is None else argv
    threads = default
    for i, arg in enumerate(argv):
        value = None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                threads = max(1, int(value))
            except ValueError:
                pass  # argparse reports it
    set_thread_env(threads)
    return threads


def apply_threads(threads: int) -> None:
    """Set the runtime thread counts of numba and torch (after import)."""
    import numba
    import torch

    numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(int(threads))


def base_parser(description: str, repeat: int, budget: float, unit: str, only_help: str):
    """The options bench/kernels.py and bench/compressors.py share (their defaults differ)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--json", required=True, help="where to write the JSON results")
    ap.add_argument("--sizes", default="1000000,25000000", help="comma-separated vector lengths (default 1000000,25000000)")
    ap.add_argument("--threads", type=int, default=1, help="threads for numba, torch, BLAS (default 1)")
    ap.add_argument("--repeat", type=int, default=repeat, help=f"max timed runs per measurement (default {repeat})")
    ap.add_argument("--budget", type=float, default=budget,
                    help=f"seconds of timed work per {unit} before runs are cut (never below 3 runs; default {budget:g})")
    ap.add_argument("--only", default="", help=only_help)
    return ap


def parse_with_threads(ap, argv, early_threads: int):
    """Parse ``argv``; ``--threads`` must match what was read before numba was imported."""
    args = ap.parse_args(argv)
    if args.threads != early_threads:
        ap.error("--threads must be given on the command line (it is read before numba is imported)")
    return args


def parse_sizes(text: str) -> list:
    """``"1000000,25000000"`` (``1e6`` and ``25M`` also accepted) -> ``[1000000, 25000000]``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1
        if part[-1] in "km":
            mult = 1000 if part[-1] == "k" else 1_000_000
            part = part[:-1]
        value = int(float(part) * mult)
        if value <= 0:
            raise ValueError(f"expected positive sizes, found {value}")
        sizes.append(value)
    if not sizes:
        raise ValueError("expected at least one size")
    return sizes


def _time_once(fn, cpu_out=None) -> float:
    c0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    fn()
    t1 = time.perf_counter_ns()
    if cpu_out is not None:
        cpu_out.append((time.process_time_ns() - c0) * 1e-9)
    return (t1 - t0) * 1e-9


def measure_group(fns: dict, repeat: int, budget_s: float, min_repeat: int = 3, cpu: dict = None) -> dict:
    """Median-ready samples for a group of functions timed together.

    ``fns``: name -> zero-argument callable.  Each is called once untimed
    (warm-up), then timed round-robin.  The number of rounds is ``repeat``,
    reduced so the group's timed work stays near ``budget_s`` seconds, but never
    below ``min_repeat``.  Returns name -> list of wall-clock seconds.  When
    ``cpu`` is a dict it receives name -> list of process CPU seconds of the
    same calls (time on a CPU, all threads summed: with one thread it excludes
    the time the process waited for a core on a busy machine).
    """
    names = list(fns)
    for name in names:  # warm-up: JIT compilation, cache loading, first-touch allocations
        fns[name]()
    samples = {name: [] for name in names}
    cpu_samples = {name: [] for name in names}
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        round_s = 0.0
        for name in names:
            dt = _time_once(fns[name], cpu_samples[name])
            samples[name].append(dt)
            round_s += dt
        rounds = max(min_repeat, min(repeat, math.ceil(budget_s / max(round_s, 1e-9))))
        for r in range(1, rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_time_once(fns[name], cpu_samples[name]))
            if r % 4 == 3:
                gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    if cpu is not None:
        cpu.update(cpu_samples)
    return samples


def median(values) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    """The CPU model string from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cache_sizes() -> dict:
    """L2/L3 sizes as the kernel reports them (best effort; empty when unavailable)."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(base, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, entry, "size")) as f:
                size = f.read().strip()
            if kind in ("Data", "Unified"):
                out[f"L{level}"] = size
    except OSError:
        pass
    return out


def git_state() -> dict:
    """The repository commit and the files modified against it (best effort; {} outside a git checkout).

    Benchmarks are snapshots of a moving tree: this says which code was measured.
    """
    import subprocess

    root = REPO_ROOT
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "modified": [line[3:] for line in status.splitlines() if line.strip()]}


def header(threads: int, sizes, **extra) -> dict:
    """The run header shared by both benchmarks: versions, machine, settings, date."""
    import gcomp.kernels
    import numba
    import numpy
    import torch

    import gcomp

    return {
        "gcomp": gcomp.__version__,
        "gcomp_path": os.path.dirname(gcomp.__file__),
        "kernels_path": os.path.dirname(gcomp.kernels.__file__),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "caches": _cache_sizes(),
        "threads": int(threads),
        "numba_threads": int(numba.get_num_threads()),
        "torch_threads": int(torch.get_num_threads()),
        "sizes": [int(s) for s in sizes],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": LOADAVG_START,
        "loadavg_end": _loadavg(),
        "command": " ".join(["python"] + sys.argv),
        "git": git_state(),
        **extra,
    }


def _loadavg():
    """1/5/15-minute load averages (other processes on the machine inflate absolute times)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


#: load averages when this module was imported (the start of the run)
LOADAVG_START = _loadavg()


def write_json(path: str, head: dict, records: list, **extra) -> None:
    """Write ``{"header": head, "records": records, **extra}`` to ``path`` (directories created)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"header": head, "records": records, **extra}, f, indent=1, default=_json_default)
        f.write("\n")


def _json_default(obj):
    # numpy scalars and the like
    for attr in ("item", "tolist"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def fmt_time(seconds) -> str:
    """Seconds in a readable unit (us / ms / s)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_table(rows: list, columns: list, markdown: bool = False) -> str:
    """Render ``rows`` (dicts) under ``columns`` ((key, title) pairs) as aligned text or a Markdown table."""
    cells = [[title for _, title in columns]]
    for row in rows:
        cells.append(["" if row.get(key) is None else str(row.get(key)) for key, _ in columns])
    if markdown:
        cells = [[c.replace("|", "\\|") for c in r] for r in cells]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
