"""The embedded dataset: scikit-learn's handwritten digits (shipped inside the package, no download).

1797 8x8 images, 10 classes; split 80/20 stratified with a fixed seed and
standardized with the training set's statistics.  Every worker loads the same
split and takes its own shard of each epoch's shuffled order.
"""

import numpy as np

__all__ = ["load_digits_split", "epoch_batches", "TRAIN_SAMPLES"]

#: training samples of the split, whatever the seed (1797 minus the rounded 20% of each class)
TRAIN_SAMPLES = 1438


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
