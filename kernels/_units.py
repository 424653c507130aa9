"""Work units of the parallel kernels: fixed sizes, so results never depend on the thread count.

A vector of ``n`` entries is split into units of :data:`~gcomp.kernels.config.PAR_CHUNK`
entries; bucketed kernels (``qsgd``, ``uniform``, ``sign``, ``terngrad``) use

* for ``bucket_size <= PAR_CHUNK``: groups of ``PAR_CHUNK // bucket_size`` whole
  buckets (each bucket is still done in one pass that keeps it in L1);
* for larger buckets: *pieces* of ``PAR_CHUNK`` entries, ``pieces`` per bucket
  (the last piece of a bucket, and trailing pieces of the last bucket, may be
  short or empty).  A bucket statistic is then reduced per piece and the piece
  results are combined in piece order (:func:`sum_in_order` for float sums).

The serial kernels compute exactly the same units (in order), so both paths
give the same bits.  Every unit starts at a multiple of 8 entries, hence on a
byte of the packed codes at every code width.
"""

from .config import PAR_CHUNK, kernel

__all__ = ["unit_count", "unit_range", "piece_count", "piece_range", "sum_in_order", "chunk_count"]


@kernel
def chunk_count(n):
    """Plain units of :data:`PAR_CHUNK` entries covering ``n`` (the last may be short)."""
    return (n + PAR_CHUNK - 1) // PAR_CHUNK


@kernel
def piece_count(bucket_size):
    """Pieces per bucket: ``ceil(bucket_size / PAR_CHUNK)`` (1 for buckets up to ``PAR_CHUNK``)."""
    return (bucket_size + PAR_CHUNK - 1) // PAR_CHUNK


@kernel
def piece_range(n, bucket_size, q, pieces):
    """Entries ``(s, e)`` of piece ``q`` (bucket ``q // pieces``, piece ``q % pieces``); ``s == e`` if empty."""
    b = q // pieces
    j = q - b * pieces
    s = b * bucket_size + j * PAR_CHUNK
    e = min(s + PAR_CHUNK, b * bucket_size + bucket_size, n)
    if s > e:
        s = e
    return s, e


@kernel
def unit_count(n, bucket_size):
    """Work units of a bucketed kernel on ``n`` entries (module docstring)."""
    nb = (n + bucket_size - 1) // bucket_size
    if bucket_size <= PAR_CHUNK:
        g = PAR_CHUNK // bucket_size
        return (nb + g - 1) // g
    return nb * piece_count(bucket_size)


@kernel
def unit_range(n, bucket_size, u):
    """``(b0, b1, s, e)``: unit ``u`` covers entries ``s:e``, which lie in buckets ``b0:b1``."""
    if bucket_size <= PAR_CHUNK:
        g = PAR_CHUNK // bucket_size
        nb = (n + bucket_size - 1) // bucket_size
        b0 = u * g
        b1 = min(nb, b0 + g)
        return b0, b1, b0 * bucket_size, min(b1 * bucket_size, n)
    pieces = piece_count(bucket_size)
    b = u // pieces
    s, e = piece_range(n, bucket_size, u, pieces)
    return b, (b + 1 if s < e else b), s, e


@kernel(exact=True)
def sum_in_order(parts, lo, hi):
    """``parts[lo] + parts[lo+1] + ...`` from 0.0, strictly left to right (no reassociation)."""
    acc = 0.0
    for j in range(lo, hi):
        acc += parts[j]
    return acc
