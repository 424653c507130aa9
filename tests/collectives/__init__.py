"""Unit tests of every collective algorithm on the in-process transport (``run_local``; threads, fast)."""
