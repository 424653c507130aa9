"""The API reference site (docs/conf.py, docs/index.md, docs/api/): what it needs from the code, checked without
building it.  The strict build itself (``python -m sphinx -E -W --keep-going -q -b html docs build/docs-site``, the docs
extra) is its own step of .ci/run.

* every public name of the reference's core modules has a numpy-style docstring: a ``Parameters`` section naming
  exactly its parameters (when it has any) and an ``Examples`` section; every public method of their classes has a
  docstring, with a ``Parameters`` section naming exactly its parameters when it has any;
* every public constant has a ``#:`` comment (what autodoc shows) in the module that defines it;
* the docstring examples (``>>>``) run as written;
* every page of docs/ is in the site's table of contents, and every module of the reference has its page.
"""

import doctest
import importlib
import inspect
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# The modules whose every public name must have Parameters and an Example (issue 15).
CORE = ["gcomp", "gcomp.ddp", "gcomp.mpi", "gcomp.testing", "gcomp.wire", "gcomp.decentralized", "gcomp.flower",
        "gcomp.adapt", "gcomp.collectives"]
# Every module with a page in the reference (docs/api/<last part>.rst; gcomp itself: docs/api/gcomp.rst).
REFERENCE = CORE + ["gcomp.compressors", "gcomp.feedback", "gcomp.transports", "gcomp.errors", "gcomp.statecodec"]
# The modules whose docstring examples are doctests, run here (about 10 s together).  A package's names are found in
# the submodules that define them (gcomp.collectives.engine, gcomp.flower.mod...).  Examples that need several
# processes are `::` blocks, not run: gcomp.ddp's on a world-size-1 gloo group, gcomp.mpi's on MPI.COMM_SELF and
# gcomp.collectives' on in-process ranks (gcomp.transports.run_local) are.
DOCTESTED = ["gcomp", "gcomp.compressors", "gcomp.compressors.base", "gcomp.compressors._params", "gcomp.testing",
             "gcomp.wire", "gcomp.errors", "gcomp.statecodec", "gcomp.transports.base", "gcomp.transports.local",
             "gcomp.decentralized.topology", "gcomp.decentralized.gossip", "gcomp.adapt", "gcomp.ddp", "gcomp.mpi",
             "gcomp.collectives.base", "gcomp.collectives.dense", "gcomp.collectives.allreduce",
             "gcomp.collectives.allgather", "gcomp.collectives.scatter_reduce_allgather",
             "gcomp.collectives.hierarchical", "gcomp.collectives.engine", "gcomp.flower.mod",
             "gcomp.flower.strategy", "gcomp.flower.partition"]


# ----------------------------------------------------------------------------
# numpy-style docstring sections
# ----------------------------------------------------------------------------
def sections(doc):
    """``{title: [lines]}`` of a numpy-style docstring (a title line underlined with dashes of its length)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out, title = {}, None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(nxt.strip()) == {"-"} and len(nxt.strip()) == len(line.strip()):
            title = line.strip()
            out[title] = []
            i += 2
            continue
        if title is not None:
            out[title].append(line)
        i += 1
    return out


def documented_parameters(doc):
    """The names a ``Parameters`` section documents (``a, b : int`` documents a and b; ``**params`` params)."""
    names = set()
    body = sections(doc).get("Parameters", [])
    indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
    for line in body:
        if not line.strip() or len(line) - len(line.lstrip()) > indent:
            continue
        head = line.strip().split(" : ")[0]
        names.update(part.strip().lstrip("*") for part in head.split(",") if part.strip())
    return names


def signature_parameters(obj):
    """The parameter names of a callable (a class: its constructor's), without self and private ones."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set()
    return {name for name in sig.parameters if name not in ("self", "cls") and not name.startswith("_")}


def own_doc(obj):
    """The docstring written for ``obj`` itself (a dataclass's generated signature line does not count)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and doc and re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), flags=re.S):
        return None  # what @dataclass writes when the class has no docstring
    return doc


def public_names(modname):
    module = importlib.import_module(modname)
    return [(name, getattr(module, name)) for name in module.__all__]


def is_constant(obj):
    return not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj))


def check_sections(what, obj, problems, need_example=True):
    doc = own_doc(obj)
    if not doc or not doc.strip():
        problems.append(f"{what}: no docstring")
        return
    params = signature_parameters(obj)
    documented = documented_parameters(doc)
    if params and "Parameters" not in sections(doc):
        problems.append(f"{what}: no Parameters section (parameters: {sorted(params)})")
    elif params - documented:
        problems.append(f"{what}: Parameters section lacks {sorted(params - documented)}")
    stale = documented - signature_parameters_all(obj)
    if stale:
        problems.append(f"{what}: Parameters section names {sorted(stale)}, which the signature does not have")
    if need_example and "Examples" not in sections(doc):
        problems.append(f"{what}: no Examples section")


def signature_parameters_all(obj):
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return set()


# ----------------------------------------------------------------------------
# the tests
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("modname", CORE)
def test_public_names_have_parameters_and_examples(modname):
    problems = []
    for name, obj in public_names(modname):
        if inspect.ismodule(obj):
            if not (obj.__doc__ or "").strip():
                problems.append(f"{modname}.{name}: module without a docstring")
        elif not is_constant(obj):
            check_sections(f"{modname}.{name}", obj, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("modname", CORE)
def test_public_methods_are_documented(modname):
    problems = []
    for name, cls in public_names(modname):
        if not inspect.isclass(cls):
            continue
        for attr, raw in vars(cls).items():
            if attr.startswith("_"):
                continue
            if isinstance(raw, property):
                if not (raw.__doc__ or "").strip():
                    problems.append(f"{modname}.{name}.{attr}: property without a docstring")
            elif inspect.isfunction(raw) or isinstance(raw, (classmethod, staticmethod)):
                check_sections(f"{modname}.{name}.{attr}", getattr(cls, attr), problems, need_example=False)
    assert not problems, "\n".join(problems)


def constant_has_comment(modname, name, obj):
    """A ``#:`` comment right above ``name = ...`` in the module that defines it (tried: the module, then the others
    of gcomp holding the same object)."""
    home = importlib.import_module(modname)
    candidates = [home] + [m for n, m in sorted(sys.modules.items())
                           if n.startswith("gcomp.") and m is not home and getattr(m, name, None) is obj]
    pattern = re.compile(rf"^#:[^\n]*\n(?:#:[^\n]*\n)*{re.escape(name)}\s*(?::[^=\n]*)?=", flags=re.M)
    for module in candidates:
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


@pytest.mark.parametrize("modname", REFERENCE)
def test_public_constants_have_a_doc_comment(modname):
    missing = [f"{modname}.{name}" for name, obj in public_names(modname)
               if is_constant(obj) and not constant_has_comment(modname, name, obj)]
    assert not missing, f"public constants without a '#:' comment above their assignment: {missing}"


@pytest.mark.parametrize("modname", DOCTESTED)
def test_docstring_examples_run(modname):
    module = importlib.import_module(modname)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]
    assert tests, f"{modname} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {modname} failed (output above)"


def toctree_entries(text):
    """Entries of the ``{toctree}`` blocks of a MyST page, or of the ``.. toctree::`` blocks of a reST page."""
    entries = []
    for block in re.findall(r"```\{toctree\}\n(.*?)```", text, flags=re.S):
        entries += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")]
    for block in re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)*)", text):
        entries += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")]
    return entries


def test_every_docs_page_is_in_the_toc():
    entries = toctree_entries((DOCS / "index.md").read_text())
    pages = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")
    missing = [p for p in pages if p not in entries]
    assert not missing, f"docs pages missing from the toctree of docs/index.md (the strict build fails too): {missing}"
    dangling = [e for e in entries if not (DOCS / f"{e}.md").exists() and not (DOCS / f"{e}.rst").exists()]
    assert not dangling, f"docs/index.md lists pages that do not exist: {dangling}"


def test_every_reference_module_has_its_page():
    api = DOCS / "api"
    listed = toctree_entries((api / "index.rst").read_text())
    for modname in REFERENCE:
        page = "gcomp" if modname == "gcomp" else modname.rsplit(".", 1)[1]
        path = api / f"{page}.rst"
        assert path.exists(), f"{modname} has no page {path.relative_to(ROOT)}"
        assert page in listed, f"docs/api/index.rst does not list {page}"
        text = path.read_text()
        assert f".. automodule:: {modname}\n" in text, f"{path.relative_to(ROOT)} does not document {modname}"
        # autodoc leaves out a constant that a module imports from another: the page names it in an autodata line
        module = importlib.import_module(modname)
        source = inspect.getsource(module)
        for name in module.__all__:
            if name not in vars(module):
                # a name the module provides lazily (a module __getattr__, often for an optional dependency, which
                # is not imported here) is not among the members automodule finds
                assert any(f".. {d}:: {modname}.{name}\n" in text for d in ("autoclass", "autofunction", "autodata")), \
                    f"{path.relative_to(ROOT)}: add '.. autoclass:: {modname}.{name}' (a lazily imported name)"
                continue
            defined_here = re.search(rf"^{re.escape(name)}\s*(?::[^=\n]*)?=", source, flags=re.M)
            if is_constant(vars(module)[name]) and not defined_here:
                assert f".. autodata:: {modname}.{name}\n" in text, \
                    f"{path.relative_to(ROOT)}: add '.. autodata:: {modname}.{name}' (an imported constant)"
    pages = sorted(p.stem for p in api.glob("*.rst") if p.stem != "index")
    assert sorted(set(listed)) == pages, f"docs/api/index.rst lists {listed}, the pages are {pages}"


def test_sections_parser_on_a_known_docstring():
    """The checks above are only as good as the parser: it must see what a numpy docstring declares."""
    doc = """Summary.

    Parameters
    ----------
    a, b : int
        Two numbers.
    **params
        More.

    Examples
    --------
    >>> 1
    1
    """
    assert set(sections(doc)) == {"Parameters", "Examples"}
    assert documented_parameters(doc) == {"a", "b", "params"}

    def f(a, b, c, **params):
        pass

    f.__doc__ = doc
    problems = []
    check_sections("f", f, problems)
    assert problems == ["f: Parameters section lacks ['c']"]
