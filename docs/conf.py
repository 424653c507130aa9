"""Sphinx configuration for gcomp's documentation site: the pages of docs/ (Markdown, through myst-parser) and
the API reference built from the docstrings (autodoc + napoleon, numpy style).

Build it with warnings as errors (what .ci/run does)::

    python -m sphinx -E -W --keep-going -q -b html docs build/docs-site

Needs the ``docs`` extra: ``pip install -e ".[docs]"``.
"""

import gcomp

project = "gcomp"
author = "gcomp developers"
copyright = "gcomp developers"  # noqa: A001 - the name Sphinx reads
release = gcomp.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# conf.py and anything a build leaves inside docs/ are not pages
exclude_patterns = ["_build", "build", "**/.ipynb_checkpoints"]

# Markdown pages: GitHub-style heading anchors, so links such as [x](ddp.md#cuda-and-nccl) resolve and are checked
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]
# a page that skips a heading level (## then ####) renders fine; the pages are written for GitHub, keep them as they are
suppress_warnings = ["myst.header"]

# docstrings: numpy style (Parameters / Returns / Raises / Examples sections)
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = True  # "int, optional", "a or b": each type a cross-reference, "optional" a keyword

# Every cross-reference must resolve (with -W a broken :func:/:class:/:mod: reference fails the build), except the
# types of other projects (no intersphinx: the build needs no network) and the plain words docstrings use as types.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(numpy|np|torch|hypothesis|mpi4py|flwr|datetime|collections\.abc|typing|concurrent\.futures)(\..+)?"),
    ("py:class", r"callable|iterable|scalar|array_like|mpi4py communicator|object|type"),
]
# undoc-members: a public name without a docstring still shows (tests/test_docs_site.py fails on it)
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"

html_theme = "furo"
html_title = f"gcomp {release}"


# -- public constants --------------------------------------------------------------------------------------------
# A module-level constant is documented by a ``#:`` comment above its assignment, in the module that defines it.
# autodoc reads that comment only from the module being documented: a constant a package re-exports from a submodule
# (gcomp.decentralized.TOPOLOGIES comes from gcomp.decentralized.topology) is named in an ``autodata`` line of its
# page, and would show a tuple's or an int's own docstring.  This hook gives it the comment of the module that
# defines it (tests/test_docs_site.py checks that every public constant has one).
import importlib  # noqa: E402
import sys  # noqa: E402


def _constant_comment(app, what, name, obj, options, lines):
    if what != "data":
        return
    from sphinx.pycode import ModuleAnalyzer

    home, _, attr = name.rpartition(".")
    others = sorted(m for m in sys.modules if (m == "gcomp" or m.startswith("gcomp.")) and m != home)
    for modname in [home, *others]:
        module = sys.modules.get(modname)
        if module is None or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # noqa: BLE001, S112 - a module without source has no comments
            continue
        comment = docs.get(("", attr))
        if comment:
            lines[:] = list(comment)
            return
    lines[:] = []


# -- docstrings inherited from other projects ---------------------------------------------------------------------
# A gcomp class that implements another project's interface (gcomp.flower.CompressionStrategy, a Flower Strategy)
# would show that project's docstrings, written for its own documentation and references, on the methods it
# overrides without a docstring of its own.  The reference shows gcomp's docstrings only.
def _foreign_docstring(app, what, name, obj, options, lines):
    if what not in ("method", "attribute", "property") or not lines:
        return
    func = getattr(obj, "fget", obj)
    if getattr(func, "__doc__", None) is None or not str(getattr(func, "__module__", "") or "").startswith("gcomp"):
        owner = _owner_of_docstring(name)
        if owner is not None and not owner.startswith("gcomp"):
            lines[:] = []


def _owner_of_docstring(name):
    """The module of the class whose attribute's docstring ``name`` (module.Class.attr) inherits, or None."""
    parts = name.split(".")
    for split in range(len(parts) - 2, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:-1]:
            obj = getattr(obj, part, None)
        if not isinstance(obj, type):
            return None
        for base in obj.__mro__:
            attr = base.__dict__.get(parts[-1])
            doc = getattr(getattr(attr, "fget", attr), "__doc__", None) if attr is not None else None
            if doc:
                return base.__module__
        return None
    return None


# -- attribute and property docstrings are prose --------------------------------------------------------------------
# napoleon reads the first line of an attribute's or a property's docstring as "type: description", so "The compressor
# the next call uses: ..." would render (and cross-reference) "The compressor the next call uses" as a type.  gcomp
# writes these docstrings as prose: an empty reST comment first makes napoleon take the whole docstring as the
# description (it skips blank lines, not a comment).
def _attribute_prose(app, what, name, obj, options, lines):
    if what in ("attribute", "property", "data") and any(line.strip() for line in lines):
        lines[:0] = ["..", ""]


def setup(app):
    app.connect("autodoc-process-docstring", _attribute_prose, priority=400)  # before napoleon's (500)
    app.connect("autodoc-process-docstring", _constant_comment, priority=300)  # before _attribute_prose
    app.connect("autodoc-process-docstring", _foreign_docstring)
