"""The datasets of ``gcomp train``: scikit-learn's digits (the fast default) and MNIST-1D.

**digits** ships inside scikit-learn (no download): 1797 8x8 images, 10
classes; split 80/20 stratified with a fixed seed and standardized with the
training set's statistics.

**mnist1d** (Greydanus, "Scaling down deep learning", 2020) is generated
procedurally by the ``mnist1d`` package (no download): 1-D signals of 40
samples made from ten digit templates by padding, scaling, translation,
correlated and iid noise and shear; 4000 training and 1000 test signals with
the package's default parameters, on which the paper reports about 68% test
accuracy for an MLP and 94% for a CNN.  :func:`mnist1d_cache` generates it
once with the recorded parameters (:func:`mnist1d_params`) into a ``.npz``
under the output directory (named by a hash of the parameters, read back with
``allow_pickle=False``), and every worker loads that file.  The generator
seeds numpy's and Python's global generators; :func:`generate_mnist1d` saves
and restores both, so the caller's global RNG state is untouched.

Every worker loads the same split and takes its own shard of each epoch's
shuffled order (:func:`epoch_batches`).
"""

import hashlib
import json
import os
import zipfile

import numpy as np

__all__ = ["load_digits_split", "epoch_batches", "TRAIN_SAMPLES", "DATASETS", "parse_dataset", "train_samples",
           "input_size", "mnist1d_params", "generate_mnist1d", "mnist1d_cache", "load_npz", "load_dataset"]

#: training samples of the split, whatever the seed (1797 minus the rounded 20% of each class)
TRAIN_SAMPLES = 1438

#: the datasets ``gcomp train --dataset`` knows
DATASETS = ("digits", "mnist1d")

#: what ``--dataset mnist1d:KEY=VALUE`` may change: the generator's sample count (num_samples) and seed
_MNIST1D_KEYS = ("samples", "seed")
#: fewest and most MNIST-1D samples ``--dataset mnist1d:samples=N`` accepts (ten classes, an 80/20 split)
MNIST1D_MIN_SAMPLES = 100
MNIST1D_MAX_SAMPLES = 1_000_000


def load_digits_split(seed=0, test_fraction=0.2):
    """``(x_train, y_train, x_test, y_test)`` float32 / int64 numpy arrays, identical on every worker."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        test_idx.extend(members[: int(round(test_fraction * members.size))].tolist())
    test = np.zeros(y.size, bool)
    test[test_idx] = True
    mean = x[~test].mean(axis=0)
    std = x[~test].std(axis=0) + 1e-3
    x = (x - mean) / std
    return x[~test], y[~test], x[test], y[test]


def epoch_batches(n_train, batch_size, rank, world, epoch, seed=0):
    """This rank's index batches for ``epoch``: one shared permutation, rank-strided, equal counts on all ranks."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    order = rng.permutation(n_train)
    steps = n_train // (batch_size * world)
    mine = order[rank::world][: steps * batch_size]
    return mine.reshape(steps, batch_size)


# --- MNIST-1D ---------------------------------------------------------------------------------------------------


def mnist1d_params(samples=5000, seed=42):
    """The generator parameters of an MNIST-1D set: ``mnist1d``'s defaults (the paper's set) with ``samples``, ``seed``.

    A plain JSON-able dict (``mnist1d.data.get_dataset_args`` without its download URL), recorded in results.json.
    """
    from mnist1d.data import get_dataset_args

    params = get_dataset_args(as_dict=True)
    params.pop("url", None)  # gcomp never downloads: the set is generated from these parameters
    params.update(num_samples=int(samples), seed=int(seed))
    return params


def parse_dataset(spec):
    """``(name, params)`` from a ``--dataset`` spec: ``digits``, ``mnist1d`` or ``mnist1d:samples=N,seed=S``.

    ``params`` is None for digits and :func:`mnist1d_params`'s dict for mnist1d.  Raises ValueError naming what is
    accepted.
    """
    if not isinstance(spec, str):
        raise ValueError(f"expected a dataset spec string ({' or '.join(DATASETS)}), found {type(spec).__name__}")
    name, _, rest = spec.partition(":")
    if name not in DATASETS:
        raise ValueError(f"expected a dataset in {', '.join(DATASETS)}, found {name!r}")
    if name == "digits":
        if rest:
            raise ValueError(f"expected no parameters for the digits dataset, found {rest!r}")
        return name, None
    given = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in _MNIST1D_KEYS:
            raise ValueError(f"expected mnist1d parameters KEY=VALUE with KEY in {', '.join(_MNIST1D_KEYS)}, "
                             f"found {item!r}")
        if key in given:
            raise ValueError(f"expected each mnist1d parameter once, found {key!r} twice")
        try:
            given[key] = int(value)
        except ValueError:
            raise ValueError(f"expected an integer for mnist1d's {key}, found {value!r}") from None
    samples = given.get("samples", 5000)
    if not MNIST1D_MIN_SAMPLES <= samples <= MNIST1D_MAX_SAMPLES:
        raise ValueError(f"expected mnist1d samples in [{MNIST1D_MIN_SAMPLES}, {MNIST1D_MAX_SAMPLES}] (ten classes, "
                         f"an 80/20 split), found {samples}")
    if given.get("seed", 42) < 0:
        raise ValueError(f"expected a non-negative mnist1d seed, found {given['seed']}")
    try:
        return name, mnist1d_params(**given)
    except ImportError:
        raise ValueError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from None


def train_samples(spec):
    """Training samples of the dataset ``spec`` (without generating it)."""
    name, params = parse_dataset(spec)
    if name == "digits":
        return TRAIN_SAMPLES
    per_class = params["num_samples"] // 10
    return int(10 * per_class * params["train_split"])


def input_size(spec):
    """Features per sample of the dataset ``spec``: 64 (8x8 digits) or mnist1d's final sequence length."""
    name, params = parse_dataset(spec)
    return 64 if name == "digits" else int(params["final_seq_length"])


def generate_mnist1d(params):
    """``(x_train, y_train, x_test, y_test)`` (float32 / int64) generated by ``mnist1d`` from ``params``.

    No download and no pickle: it calls the package's generator directly.  The generator seeds numpy's and Python's
    global generators; both are restored afterwards, so the caller's global RNG state is unchanged.
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    args = get_dataset_args(as_dict=True)
    unknown = sorted(set(params) - set(args))
    if unknown:
        raise ValueError(f"expected mnist1d generator parameters among {sorted(args)}, found {unknown}")
    args.update(params)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (np.ascontiguousarray(data["x"], np.float32), np.ascontiguousarray(data["y"], np.int64),
            np.ascontiguousarray(data["x_test"], np.float32), np.ascontiguousarray(data["y_test"], np.int64))


def _params_key(params):
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def mnist1d_cache(out_dir, params):
    """The ``.npz`` of the MNIST-1D set ``params`` under ``out_dir/data/``: generated on first use, then reused.

    The file name carries a hash of the parameters, and the file records them: a file whose recorded parameters
    differ, or that does not load, is generated again.  Written to a temporary name and renamed, so a reader never
    sees half a file.  Returns the path.
    """
    folder = os.path.join(out_dir, "data")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"mnist1d-{_params_key(params)}.npz")
    if os.path.exists(path):
        try:
            load_npz(path, params)
            return path
        except ValueError:
            pass  # a stale or damaged cache: generate it again
    x_train, y_train, x_test, y_test = generate_mnist1d(params)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             params=np.frombuffer(json.dumps(params, sort_keys=True).encode(), np.uint8))
    os.replace(tmp, path)
    return path


def load_npz(path, params=None):
    """``(x_train, y_train, x_test, y_test)`` from a dataset ``.npz`` (no pickle), every array validated.

    With ``params``, the parameters recorded in the file must equal them.  Raises ValueError saying what was expected.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"expected a dataset .npz at {path}, could not read it: {exc}") from None
    names = ("x_train", "y_train", "x_test", "y_test")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"expected arrays {', '.join(names)} in {path}, missing {', '.join(missing)}")
    x_train, y_train, x_test, y_test = (arrays[n] for n in names)
    for x, y, part in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.dtype != np.float32 or x.ndim != 2 or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"expected {part} arrays float32 (N, L) and int64 (N,) in {path}, found "
                             f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"expected {part} labels in 0..9 in {path}, found {y.min()}..{y.max()}")
        if not np.isfinite(x).all():
            raise ValueError(f"expected finite {part} signals in {path}, found NaN or Inf")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"expected train and test signals of one length in {path}, found {x_train.shape[1]} "
                         f"and {x_test.shape[1]}")
    if params is not None:
        recorded = bytes(arrays.get("params", np.zeros(0, np.uint8)).astype(np.uint8)).decode(errors="replace")
        if recorded != json.dumps(params, sort_keys=True):
            raise ValueError(f"expected {path} to hold the set generated with {params}, found {recorded or 'none'}")
    return x_train, y_train, x_test, y_test


def load_dataset(cfg):
    """The split a worker trains on, from its config: ``dataset`` (default digits); for mnist1d, the ``data_path`` the
    runner generated and the ``dataset_params`` it must hold (the worker does not import ``mnist1d``)."""
    name = cfg.get("dataset", "digits").partition(":")[0]
    if name == "digits":
        return load_digits_split(cfg["seed"])
    if name != "mnist1d":
        raise ValueError(f"expected a dataset in {', '.join(DATASETS)}, found {name!r}")
    return load_npz(cfg["data_path"], cfg["dataset_params"])
