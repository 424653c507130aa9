"""Fixtures of the wire tests.

``no_pickle``: no pickle, ever (numba's own kernel cache may unpickle its index;
nobody else may).  A module opts in with
``pytestmark = pytest.mark.usefixtures("no_pickle")``; every wire test module
split out of the former test_wire.py does.
"""

import pickle

import pytest
from _packets import PICKLE_CALLS, _guard, _warm_up


@pytest.fixture(scope="module")
def no_pickle():
    _warm_up()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("load", "loads", "Unpickler"):
            mp.setattr(pickle, name, _guard(name, getattr(pickle, name)))
        yield
    assert not PICKLE_CALLS, f"pickle was called: {PICKLE_CALLS}"
