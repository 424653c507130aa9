"""gcomp.kernels: Numba kernels on flat numpy arrays.

This package (the top-level ``kernels/`` folder, installed as ``gcomp.kernels``)
imports only numpy and numba.  One kernel family per module:

=====================  ======================================================
module                 what it does
=====================  ======================================================
``config``             the Numba policy every kernel is compiled with
``random``             counter-based randomness from explicit seeds
``topk``               exact top-k by magnitude (radix select, O(n))
``sampled_topk``       approximate top-k by a sampled threshold (DGC)
``threshold``          threshold selection, ``|x| >= tau``
``randomk``            random-k indices from a seed
``qsgd``               QSGD stochastic quantization, one norm per bucket
``uniform``            bucketed max-min / abs-max quantization to 1-8 bits
``sign``               scaled sign: 1 bit plus one scale per bucket
``terngrad``           TernGrad: stochastic ternary codes
``natural``            natural compression: stochastic rounding to powers of 2
``cast``               float32 <-> float16 / bfloat16 casts (numpy's rounding, vectorized)
``bitpack``            packing and unpacking 1, 2, 4 and 8-bit codes
``index_coding``       sparse indices as delta+varint or as a bitmap
``scatter``            scatter-add, gather, non-finite counting
``error_feedback``     fused error-feedback steps (accumulate, compress, update)
``powersgd``           PowerSGD's products (M Q, M^T P, P Q^T) in one pass each, EF fusable
=====================  ======================================================

Conventions (every module):

* Private ``_name`` kernels take preallocated outputs and never raise; the
  public wrapper validates dtype, contiguity, sizes and parameters, allocates
  what the caller did not pass, and calls the kernel.  Wrappers raise
  ``TypeError`` / ``ValueError`` with "expected ..., found ..." messages.
* Inputs are 1-D float arrays (float16/float64 are converted to float32;
  float32 C-contiguous input is used without a copy).  Indices are int64,
  ascending.  Codes are uint8, bit-packed LSB-first.
* Randomness is an argument: a 64-bit ``seed`` (see
  :func:`gcomp.kernels.random.derive_seed`); global RNGs are never touched.
* Bucket sizes are positive multiples of 8, so every bucket starts on a byte
  boundary of the packed codes whatever the code width.
* Threads: selection, every quantizer encoder and decoder, packing, the
  error-feedback steps and PowerSGD's products have parallel kernels, used for large vectors when the
  calling thread has more than one Numba thread (``NUMBA_NUM_THREADS``,
  ``numba.set_num_threads``).  They give the same bytes as the serial kernels
  for every thread count (see :mod:`gcomp.kernels.config`).

Non-finite values (one policy for every kernel): NaN and +-Inf are never
silently turned into finite numbers and never silently dropped.

* Selection (``topk``, ``sampled_topk``, ``threshold``) orders magnitudes by
  the bit pattern of ``|x|``: NaN ranks above +Inf, which ranks above every
  finite value, so non-finite entries are selected first; values are copied
  unchanged.  ``randomk`` and ``scatter`` copy/add values as IEEE arithmetic does.
* Bucketed quantizers (``qsgd``, ``uniform``, ``sign``, ``terngrad``): a bucket
  holding a non-finite value gets a NaN scale and all-zero codes, so every
  element of that bucket decodes to NaN.
* ``natural``: a non-finite element (and a finite one that rounds up past the
  float32 range) decodes to NaN.
* ``scatter.count_nonfinite`` counts them, so the layers above can apply one
  policy on every rank.
"""

from . import config, random

__all__ = ["config", "random"]
