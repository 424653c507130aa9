"""No pickle, ever: the ``no_pickle`` guard of conftest.py is active during the wire tests, and gcomp.wire
imports no deserialiser (docs/wire-format.md, section 9).
"""

import ast
import inspect
import pickle

import pytest
from _packets import PICKLE_CALLS

from gcomp import wire

pytestmark = pytest.mark.usefixtures("no_pickle")


def test_pickle_guard_is_active():
    with pytest.raises(AssertionError, match="pickle.loads called"):
        pickle.loads(pickle.dumps(1))
    PICKLE_CALLS.clear()


def test_wire_module_imports_no_deserialiser():
    tree = ast.parse(inspect.getsource(wire))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(node.value, ast.Name):
            assert node.value.id not in ("np", "numpy", "pickle", "marshal"), f"{node.value.id}.{node.attr} in gcomp.wire"
    assert not imported & {"pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib", "copyreg"}
