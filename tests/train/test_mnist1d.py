"""MNIST-1D in `gcomp train`: the generator call, the .npz cache, the 1-D CNN, and real runs (DDP, MPI, gossip)."""

import json
import os
import random

import numpy as np
import pytest
import torch

from gcomp.cli import main
from gcomp.train import TrainOptions, train
from gcomp.train.data import (
    generate_mnist1d,
    input_size,
    load_dataset,
    load_npz,
    mnist1d_cache,
    mnist1d_params,
    parse_dataset,
    train_samples,
)
from gcomp.train.models import build_model

SMALL = "mnist1d:samples=300,seed=5"


def test_generator_makes_the_split_without_touching_global_rngs():
    params = mnist1d_params(samples=300, seed=5)
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.get_state(), random.getstate()
    x_train, y_train, x_test, y_test = generate_mnist1d(params)
    after_np = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(before_np, after_np, strict=True))
    assert random.getstate() == before_py
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.shape == (240, 40) and x_test.shape == (60, 40) and y_test.shape == (60,)
    assert len(y_train) == train_samples(SMALL)
    assert set(np.unique(y_train)) == set(range(10))
    assert np.isfinite(x_train).all()
    # standardized over the whole set by the generator
    both = np.concatenate([x_train, x_test])
    assert abs(both.mean()) < 1e-4 and both.std() == pytest.approx(1.0, abs=1e-4)
    # the same parameters give the same set; another seed another one
    again = generate_mnist1d(params)
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True))
    other = generate_mnist1d(mnist1d_params(samples=300, seed=6))
    assert not np.array_equal(other[0], x_train)


def test_default_set_is_the_papers():
    name, params = parse_dataset("mnist1d")
    assert name == "mnist1d"
    assert params["num_samples"] == 5000 and params["seed"] == 42 and params["final_seq_length"] == 40
    assert "url" not in params  # nothing is downloaded
    assert train_samples("mnist1d") == 4000 and input_size("mnist1d") == 40
    assert parse_dataset("digits") == ("digits", None) and input_size("digits") == 64


@pytest.mark.parametrize("spec, message", [
    ("mnist", "expected a dataset in digits, mnist1d"),
    ("digits:samples=10", "no parameters for the digits"),
    ("mnist1d:size=10", "KEY in samples, seed"),
    ("mnist1d:samples", "KEY in samples, seed"),
    ("mnist1d:samples=ten", "expected an integer"),
    ("mnist1d:samples=10", "expected mnist1d samples in [100"),
    ("mnist1d:seed=-1", "non-negative"),
    ("mnist1d:seed=1,seed=2", "twice"),
])
def test_bad_dataset_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_dataset(spec)


def test_cache_is_generated_once_and_checked(tmp_path):
    params = mnist1d_params(samples=200, seed=1)
    path = mnist1d_cache(str(tmp_path), params)
    assert os.path.dirname(path) == str(tmp_path / "data") and path.endswith(".npz")
    first = load_npz(path, params)
    stamp = os.stat(path).st_mtime_ns
    assert mnist1d_cache(str(tmp_path), params) == path and os.stat(path).st_mtime_ns == stamp  # reused
    assert all(np.array_equal(a, b) for a, b in zip(first, generate_mnist1d(params), strict=True))
    # the arrays load without pickle, and the file records the parameters it was made with
    with np.load(path, allow_pickle=False) as f:
        assert json.loads(bytes(f["params"]).decode()) == params
    with pytest.raises(ValueError, match="expected .* to hold the set generated with"):
        load_npz(path, mnist1d_params(samples=200, seed=2))
    # a damaged cache is generated again
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="could not read it"):
        load_npz(path)
    assert mnist1d_cache(str(tmp_path), params) == path
    assert all(np.array_equal(a, b) for a, b in zip(first, load_npz(path, params), strict=True))
    # no temporary file is left behind
    assert os.listdir(tmp_path / "data") == [os.path.basename(path)]


def test_load_npz_validates_arrays(tmp_path):
    good = {"x_train": np.zeros((4, 40), np.float32), "y_train": np.zeros(4, np.int64),
            "x_test": np.zeros((2, 40), np.float32), "y_test": np.zeros(2, np.int64)}
    cases = [({"y_train": None}, "missing y_train"),
             ({"x_train": np.zeros((4, 40), np.float64)}, "float32"),
             ({"y_test": np.full(2, 10, np.int64)}, "labels in 0..9"),
             ({"x_test": np.full((2, 40), np.nan, np.float32)}, "finite"),
             ({"x_test": np.zeros((2, 39), np.float32)}, "one length")]
    for change, message in cases:
        arrays = {k: v for k, v in {**good, **change}.items() if v is not None}
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            load_npz(str(path))
    # an object array would need pickle: refused
    np.savez(tmp_path / "pickled.npz", **{**good, "x_train": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="could not read it|float32"):
        load_npz(str(tmp_path / "pickled.npz"))


def test_worker_loads_what_the_runner_generated(tmp_path):
    name, params = parse_dataset(SMALL)
    path = mnist1d_cache(str(tmp_path), params)
    cfg = {"dataset": name, "dataset_params": params, "data_path": path, "seed": 0}
    x_train, y_train, x_test, y_test = load_dataset(cfg)
    assert x_train.shape == (train_samples(SMALL), input_size(SMALL)) and len(y_test) == 60
    digits = load_dataset({"seed": 0})  # configs written before --dataset existed load the digits
    assert digits[0].shape[1] == 64


def test_cnn1d_shapes_seed_and_global_rng():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = build_model("cnn1d", 1024, seed=3, inputs=40)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("cnn1d", 1024, seed=3, inputs=40)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert sum(p.numel() for p in a.parameters()) == 699_914
    assert a(torch.zeros(5, 40)).shape == (5, 10)
    assert build_model("cnn1d", 32, inputs=64)(torch.zeros(2, 64)).shape == (2, 10)
    assert build_model("mlp", 32, inputs=40)(torch.zeros(2, 40)).shape == (2, 10)
    with pytest.raises(ValueError, match="cnn model takes 8x8 digit images"):
        build_model("cnn", 32, inputs=40)


@pytest.mark.parametrize("change, message", [
    ({"dataset": "mnist"}, "expected --dataset digits or mnist1d"),
    ({"dataset": "mnist1d:samples=5"}, "--dataset mnist1d:samples=5: expected mnist1d samples"),
    ({"model": "cnn"}, "cnn takes 8x8 digit images"),
    ({"dataset": "mnist1d:samples=200", "batch_size": 100}, "at most 80 (160 training samples over 2 workers)"),
])
def test_train_refuses_bad_dataset_options(tmp_path, change, message):
    opts = TrainOptions(**{"workers": 2, "dataset": "mnist1d", "out": str(tmp_path), "compressors": ["none"],
                           "progress": False, "plots": False, **change})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(opts)


def test_cli_dataset_option(tmp_path, capsys):
    # a validation error stops the run before any worker starts: one line, exit 2
    assert main(["train", "--dataset", "mnist1d", "--model", "cnn", "--out", str(tmp_path), "--quiet"]) == 2
    assert "cnn takes 8x8 digit images" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist2d", "--out", str(tmp_path), "--quiet"]) == 2
    assert "expected --dataset digits or mnist1d, found 'mnist2d'" in capsys.readouterr().err
    from gcomp.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", "mnist1d"])
    assert args.model is None and args.dataset == "mnist1d"
    assert build_parser().parse_args(["train", "--model", "cnn1d"]).model == "cnn1d"


def _run_of_the_600_sample_set(argv, out, capsys):
    """Run ``gcomp train argv`` on ``mnist1d:samples=600,seed=3``; check that results.json names the 1-D CNN, the
    dataset, its generator (parameters, package version) and a cached set of the right shape; its results."""
    assert main(argv) == 0
    capsys.readouterr()
    with open(out / "results.json") as f:
        results = json.load(f)
    header = results["header"]
    assert header["model"] == "cnn1d" and header["dataset"] == "mnist1d:samples=600,seed=3"
    generator = header["dataset_generator"]
    assert generator["params"] == mnist1d_params(samples=600, seed=3) and generator["package_version"]
    assert load_npz(str(out / generator["cache"]), generator["params"])[0].shape == (480, 40)
    return results


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mnist1d_cli_run_on_three_mpi_workers_records_the_generator(tmp_path, capsys):
    """`gcomp train --dataset mnist1d:...` under mpiexec -n 3 (the DDP worker runs in the test below): the model
    follows the dataset, ranks agree, results.json records the generator and its cached file."""
    out = tmp_path / "out"
    argv = ["train", "--dataset", "mnist1d:samples=600,seed=3", "--workers", "3", "--epochs", "1", "--hidden", "64",
            "--batch-size", "16", "--backend", "mpi", "--compressor", "topk:ratio=0.05", "--quiet", "--out", str(out)]
    (run,) = _run_of_the_600_sample_set(argv, out, capsys)["runs"]
    assert run["ranks_agree"] and run["steps"] == 480 // (16 * 3)
    assert 0.0 <= run["final_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cnn_topk_1pct_stays_within_3_points_of_dense(tmp_path):
    """The issue's check: the 1-D CNN on MNIST-1D (the paper's 4000/1000 set), 2 DDP workers on gloo with gcomp's hook,
    496 steps of global batch 64 each: topk 1% (residual error feedback) ends within 3 points of no compression.

    Measured here: none 95.2%, topk 94.9% (seeds 1 and 2 of the same run: 95.1/93.1 and 95.7/94.9).  After 6 epochs
    instead of 8 the gap reached 8 points on seed 2 (warm-up still decides there), hence 8.
    """
    opts = TrainOptions(workers=2, dataset="mnist1d", model="cnn1d", epochs=8, batch_size=32, lr=0.05,
                        compressors=["none", "topk:ratio=0.01"], out=str(tmp_path), progress=False, plots=False,
                        timeout=360)
    results = train(opts)
    runs = {r["compressor"]: r for r in results["runs"]}
    dense, topk = runs["none"], runs["topk:ratio=0.01"]
    assert dense["steps"] == topk["steps"] == 8 * (4000 // 64)
    assert dense["ranks_agree"] and topk["ranks_agree"]
    assert dense["final_accuracy"] >= 0.85, "the dense run must learn the task for the comparison to mean anything"
    assert topk["final_accuracy"] >= dense["final_accuracy"] - 0.03, (dense["final_accuracy"], topk["final_accuracy"])
    # the hook compressed: about 1% of the values (plus indices and headers) on the wire
    assert topk["counted_compression_ratio"] > 20


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_federated_run_on_mnist1d_trains_the_cnn1d_from_the_cached_set(tmp_path, capsys):
    """`gcomp train --architecture federated --dataset mnist1d:...` on Flower's simulation engine: the clients train
    the 1-D CNN on their partitions of the generated set (cached under --out/data/), results.json records the
    generator, and top-k's uplink is a fraction of the dense model."""
    from gcomp.train.federated import validate_federated

    out = tmp_path / "out"
    argv = ["train", "--architecture", "federated", "--dataset", "mnist1d:samples=600,seed=3", "--clients", "3",
            "--fraction", "1", "--rounds", "1", "--local-epochs", "1", "--hidden", "32", "--batch-size", "16",
            "--compressor", "topk:ratio=0.05", "--quiet", "--out", str(out)]
    (run,) = _run_of_the_600_sample_set(argv, out, capsys)["runs"]
    assert run["rounds"] == 1 and run["sampled"] == {"1": [0, 1, 2]}
    assert 0.0 <= run["final_accuracy"] <= 1.0
    # the dense payload is the float32 parameters of the CNN1D of width 32 on 40-sample signals, not the digits MLP
    params = sum(p.numel() for p in build_model("cnn1d", 32, inputs=40).parameters())
    assert 4 * params <= run["dense_model_bytes"] < 4 * params + 4096
    assert run["uplink_bytes_per_client_per_round"] < run["dense_model_bytes"] / 5
    # cnn is the 8x8-image model: refused for mnist1d before anything starts
    bad = TrainOptions(architecture="federated", dataset="mnist1d:samples=600,seed=3", model="cnn", clients=3,
                       compressors=["none"], out=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="cnn takes 8x8 digit images"):
        validate_federated(bad)
