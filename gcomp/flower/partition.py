"""Client partitions of a labelled training set: IID and Dirichlet(alpha) non-IID.

Both take the labels and return one index array per client (sorted, disjoint,
covering every sample), drawn from their own seeded generator (the global
RNGs are untouched):

* :func:`iid_partition`: a random permutation cut into near-equal shards;
* :func:`dirichlet_partition` (Hsu et al. 2019, as in most FL benchmarks): for
  each class, the class's samples are split among the clients in proportions
  drawn from Dirichlet(alpha, ..., alpha).  Small alpha (0.1) gives each client
  few classes, large alpha (100) approaches IID.  A draw that leaves a client
  with fewer than ``min_samples`` samples is redrawn (up to ``tries`` times).
"""

import math

import numpy as np

from ..errors import ConfigError

__all__ = ["iid_partition", "dirichlet_partition", "partition", "label_histogram"]


def _check(labels, clients):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"expected a 1-D label array, found shape {labels.shape}")
    if isinstance(clients, bool) or not isinstance(clients, (int, np.integer)) or clients < 1:
        raise ConfigError(f"expected a positive number of clients, found {clients!r}")
    if clients > labels.size:
        raise ConfigError(f"expected at most {labels.size} clients (one sample each at least), found {clients}")
    return labels


def iid_partition(labels, clients, seed=0):
    """``clients`` index arrays from one seeded permutation, sizes differing by at most one.

    Parameters
    ----------
    labels : array_like
        The training set's labels (1-D; only their number matters here).
    clients : int
        The number of clients, 1 to ``len(labels)``.
    seed : int
        Seeds the partition's own generator (the global RNGs are untouched).

    Returns
    -------
    list of numpy.ndarray
        One sorted index array per client; disjoint, covering every sample.

    Raises
    ------
    gcomp.errors.ConfigError
        Labels that are not 1-D, or a number of clients out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.flower import iid_partition
    >>> parts = iid_partition(np.zeros(10), clients=3, seed=0)
    >>> [p.size for p in parts]
    [4, 3, 3]
    >>> sorted(np.concatenate(parts).tolist()) == list(range(10))
    True
    """
    labels = _check(labels, clients)
    rng = np.random.Generator(np.random.PCG64([seed, 0x11D]))
    order = rng.permutation(labels.size)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_partition(labels, clients, alpha, seed=0, min_samples=2, tries=100):
    """``clients`` index arrays with per-class shares drawn from Dirichlet(alpha) (see the module docstring).

    Parameters
    ----------
    labels : array_like
        The training set's labels (1-D).
    clients : int
        The number of clients.
    alpha : float
        The Dirichlet concentration, positive: 0.1 gives each client few
        classes, 100 approaches IID.
    seed : int
        Seeds the partition's own generator (the global RNGs are untouched).
    min_samples : int
        Every client gets at least this many samples (a draw that fails is redrawn).
    tries : int
        Draws before giving up.

    Returns
    -------
    list of numpy.ndarray
        One sorted index array per client; disjoint, covering every sample.

    Raises
    ------
    gcomp.errors.ConfigError
        An invalid argument, or ``tries`` draws that all left a client under ``min_samples``.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.flower import dirichlet_partition, label_histogram
    >>> labels = np.repeat(np.arange(10), 100)           # 10 classes, 100 samples each
    >>> parts = dirichlet_partition(labels, clients=4, alpha=0.1, seed=0)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(1000))
    True
    >>> counts = label_histogram(labels, parts)          # (clients, classes)
    >>> counts.shape, counts.sum(axis=0).tolist() == [100] * 10
    ((4, 10), True)
    """
    labels = _check(labels, clients)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"expected a positive finite Dirichlet alpha, found {alpha!r}")
    if min_samples * clients > labels.size:
        raise ConfigError(f"expected at least {min_samples} samples per client, but {labels.size} samples cannot give "
                          f"{clients} clients that many")
    rng = np.random.Generator(np.random.PCG64([seed, 0xD12]))
    classes = np.unique(labels)
    smallest = 0
    for _ in range(tries):
        parts = [[] for _ in range(clients)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for i, chunk in enumerate(np.split(members, cuts)):
                parts[i].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        smallest = min(r.size for r in result)
        if smallest >= min_samples:
            return result
    raise ConfigError(f"expected every client to get at least {min_samples} samples, but {tries} Dirichlet({alpha}) "
                      f"draws left one with {smallest}; use a larger alpha or fewer clients")


def partition(labels, clients, non_iid=None, seed=0):
    """IID when ``non_iid`` is None, else Dirichlet(``non_iid``): what ``gcomp train --non-iid`` uses.

    Parameters
    ----------
    labels : array_like
        The training set's labels (1-D).
    clients : int
        The number of clients.
    non_iid : float, optional
        None: :func:`iid_partition`; a number: the ``alpha`` of :func:`dirichlet_partition`.
    seed : int
        Seeds the partition's own generator.

    Returns
    -------
    list of numpy.ndarray
        One sorted index array per client.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.flower import partition
    >>> labels = np.repeat(np.arange(10), 100)
    >>> [p.size for p in partition(labels, 4)]
    [250, 250, 250, 250]
    >>> len(partition(labels, 4, non_iid=0.5, seed=1))
    4
    """
    if non_iid is None:
        return iid_partition(labels, clients, seed)
    return dirichlet_partition(labels, clients, non_iid, seed)


def label_histogram(labels, parts):
    """``(clients, classes)`` counts of each class per client (for reports and tests).

    Parameters
    ----------
    labels : array_like
        The training set's labels (1-D).
    parts : list of numpy.ndarray
        Index arrays, one per client (what the partitions return).

    Returns
    -------
    numpy.ndarray
        ``counts[i, j]``: samples of the ``j``-th smallest label held by client ``i``.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.flower import label_histogram
    >>> labels = np.array([0, 0, 1, 1, 2])
    >>> label_histogram(labels, [np.array([0, 2]), np.array([1, 3, 4])])
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    return np.stack([np.array([(labels[p] == c).sum() for c in classes]) for p in parts])
