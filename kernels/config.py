"""The one Numba policy for every gcomp kernel.

Every kernel in ``gcomp.kernels`` is compiled through :func:`kernel`, so the
flags below hold everywhere:

* ``fastmath`` is the explicit set ``{"nsz", "arcp", "contract", "afn", "reassoc"}``.
  ``nnan`` and ``ninf`` are deliberately absent: with them LLVM may delete NaN
  checks, and the non-finite policy documented in :mod:`gcomp.kernels` would
  silently stop holding.
* ``error_model="numpy"``: a division by zero gives inf/nan instead of raising,
  so a kernel never raises.  Validation is the job of the Python wrappers.
* ``boundscheck=False`` (Numba's default): kernels trust their wrappers.
* ``cache=True`` on every kernel, parallel ones included; set
  ``GCOMP_NUMBA_CACHE=0`` to turn the on-disk cache off (read once, at import
  time).  Numba's own ``NUMBA_CACHE_DIR`` picks the directory.
* ``nogil=True``: a kernel releases the GIL, so a communication thread keeps
  running while a bucket is being compressed.

For kernel authors: Numba's cache tracks a kernel's own source file only.  A
kernel that calls a helper from another module keeps its old compiled code
when only that module changes; after editing a shared helper, remove
``kernels/__pycache__`` (or run with ``GCOMP_NUMBA_CACHE=0``).  Also, without
``nnan`` LLVM does not vectorize float min/max reductions: reduce integer keys
of the bit patterns instead (see ``uniform``).

Parallel kernels (``kernel(fn, parallel=True)``, ``numba.prange``):

* **Same bits for any thread count.**  A parallel kernel splits its vector into
  work units of :data:`PAR_CHUNK` entries (bucketed quantizers: whole buckets
  grouped up to that size, or pieces of that size of larger buckets; see
  :mod:`gcomp.kernels._units`): fixed sizes that never depend on the thread
  count.  Per-unit partials are combined serially, in unit order: integer
  histograms and min/max keys are order-free anyway, float sums (norms, mean
  ``|x|`` of large buckets) are summed per piece and the piece sums added in
  order by a helper compiled with :data:`EXACT_MATH` (no reassociation).
  Selected indices keep index order (per-unit counts, an exclusive prefix sum,
  then parallel writes).  Random draws are counter-based per element.  The
  serial kernel of each family computes the same units the same way, so the
  serial and the parallel path give the same bits.  Parallel kernels are
  separate dispatchers, so a process that never runs one never compiles one.
* **When.**  :func:`run` takes the parallel kernel for vectors of at least
  :data:`PARALLEL_MIN` entries (:data:`PARALLEL_MIN_SELECTION` for selection)
  when the calling thread's ``numba.get_num_threads()`` is above 1
  (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``: the existing settings;
  Numba's count is per Python thread, and a thread that never set it uses
  ``NUMBA_NUM_THREADS``).  Small vectors never touch the thread pool.
* **Concurrency.**  One parallel launch at a time per process: a call that
  finds another gcomp parallel kernel running (a DDP hook compressing on the
  autograd thread while a communication thread decompresses) runs the serial
  kernel instead of waiting.  That is safe under every Numba threading layer
  (``workqueue`` aborts the process on concurrent launches) and never
  oversubscribes the cores.
* **fork().**  GNU OpenMP (Numba's ``omp`` layer on Linux) is not fork-safe:
  a child forked after the parent started Numba's thread pool is terminated
  when it launches a parallel region.  Such a child runs the serial kernels.
* **Caching.**  Numba 0.68 caches ``parallel=True`` kernels on disk like the
  serial ones (checked: a second process loads them, no recompilation).  The
  work-unit sizes are compile-time constants of every kernel: after changing
  :data:`PAR_CHUNK`, remove ``kernels/__pycache__`` (see above), or serial and
  parallel kernels compiled at different times may split large buckets
  differently.
"""

import os
import threading

import numba

__all__ = ["CACHE", "FASTMATH", "EXACT_MATH", "PAR_CHUNK", "PARALLEL_MIN", "PARALLEL_MIN_SELECTION", "kernel", "run",
           "parallel_threads", "cache_dir", "threading_layer"]


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


#: Whether kernels are cached on disk (``GCOMP_NUMBA_CACHE``, default on).
CACHE = _env_flag("GCOMP_NUMBA_CACHE", True)

#: LLVM fast-math flags used by every kernel; never ``nnan`` nor ``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: flags for the few helpers whose float operations must run exactly as written (per-bucket
#: parameters such as ``norm * (1 / levels)``, decoded values, combining per-unit partial
#: sums): none, i.e. strict IEEE, so LLVM may not reorder, fuse or rewrite them even after
#: inlining them into a fast-math kernel (fast-math flags are per instruction).
EXACT_MATH = frozenset()

#: entries per unit of parallel work (a multiple of 8, so every unit starts on a byte of
#: packed codes at every code width); fixed, so results never depend on the thread count
PAR_CHUNK = 1 << 16

#: vectors with fewer entries run the serial kernels (measured on 2 cores: quantizers and
#: packing gain from 2**17 entries on, see docs/performance.md; below one unit nothing can split)
PARALLEL_MIN = 1 << 18

#: the same for the selection kernels (exact and sampled top-k, threshold, error-feedback
#: top-k), whose sample, select and extra launches stay serial: they gain from about 2**20
PARALLEL_MIN_SELECTION = 1 << 20


def kernel(fn=None, *, parallel: bool = False, exact: bool = False):
    """Compile ``fn`` with gcomp's Numba policy (see the module docstring).

    ``exact=True`` compiles with :data:`EXACT_MATH` instead of :data:`FASTMATH`.
    """

    def wrap(f):
        return numba.njit(
            cache=CACHE,
            nogil=True,
            fastmath=set(EXACT_MATH) if exact else set(FASTMATH),
            error_model="numpy",
            parallel=parallel,
        )(f)

    if fn is None:
        return wrap
    return wrap(fn)


# ---------------------------------------------------------------------------
# choosing between the serial and the parallel kernel
# ---------------------------------------------------------------------------

#: held while a gcomp parallel kernel runs (one parallel launch at a time per process)
_launch_lock = threading.Lock()

#: set in a child forked after this process started Numba's thread pool
_forked_after_launch = False

#: tests only: None (choose), "serial" or "parallel" (force the parallel kernel, any size)
_force = None


def _after_fork_in_child():
    global _forked_after_launch, _launch_lock
    _launch_lock = threading.Lock()  # a lock held by another thread at fork() stays held in the child
    try:
        from numba.np.ufunc import parallel as _np_parallel

        if _np_parallel._is_initialized:
            _forked_after_launch = True
    except Exception:  # pragma: no cover - numba internals moved: be safe
        _forked_after_launch = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_threads(n: int, at_least: int = None) -> int:
    """How many threads a kernel on ``n`` entries would use if called now from this thread (1: serial).

    ``at_least``: the kernel family's threshold (default :data:`PARALLEL_MIN`).
    """
    at_least = PARALLEL_MIN if at_least is None else at_least
    if _force == "serial" or _forked_after_launch:
        return 1
    if _force != "parallel" and (n < at_least or numba.config.NUMBA_NUM_THREADS < 2):
        return 1
    return numba.get_num_threads()


def run(n, serial, parallel, *args, at_least=None):
    """``parallel(*args)`` for a vector of ``n`` entries when that pays, else ``serial(*args)``.

    Both kernels compute the same bits (module docstring); the choice is only
    about speed.  The parallel kernel runs when ``n >= at_least`` (default
    :data:`PARALLEL_MIN`; selection kernels pass :data:`PARALLEL_MIN_SELECTION`),
    the calling thread's Numba thread count is above 1, no other gcomp parallel
    kernel is running in this process (then the serial kernel runs at once: no
    waiting, no oversubscription), and this is not a child forked after the
    thread pool started.
    """
    if _force is None and n < (PARALLEL_MIN if at_least is None else at_least):
        return serial(*args)  # small vectors: decided before any thread-count lookup
    if _force == "parallel":  # tests: the parallel kernel at any size and thread count (even 1)
        if _forked_after_launch:
            return serial(*args)
    elif parallel_threads(n, at_least) < 2:
        return serial(*args)
    lock = _launch_lock
    if not lock.acquire(blocking=False):
        return serial(*args)
    try:
        return parallel(*args)
    finally:
        lock.release()


def cache_dir() -> str:
    """The directory Numba caches compiled kernels in (``NUMBA_CACHE_DIR`` or beside the source)."""
    configured = numba.config.CACHE_DIR
    if configured:
        return configured
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def threading_layer() -> str:
    """Numba's threading layer: the active one once a parallel kernel ran, else the configured one."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"{numba.config.THREADING_LAYER} (not yet initialised)"
