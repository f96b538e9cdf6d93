"""Sphinx configuration of relaylab's documentation: `./dev docs` builds it warning-free (sphinx-build -W)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # relaylab from this checkout, also when it is not installed in editable mode

import relaylab  # noqa: E402

project = "relaylab"
author = "relaylab developers"
copyright = "relaylab developers"
release = version = relaylab.__version__

extensions = [
    "myst_parser",  # pages in Markdown, and the repository's own Markdown (schemas/README.md) included as it is
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "relaylab_cli",  # docs/_ext: the command line reference from relaylab.cli.parser()
]
# No intersphinx: the machines that build these docs (CI included) reach only the package index.

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # links to headings of Markdown pages, e.g. formats.md#the-zarr-store

# Docstrings are written for readers of the source: `name` marks code. As the default role, py:obj links a name
# that is documented here and shows any other text as code, without a warning.
default_role = "py:obj"

autosummary_generate = True
autosummary_ignore_module_all = False  # a module's __all__ is its public API (relaylab.analyze re-exports its steps)
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # relaylab's own docstrings only, not those of scikit-learn's or zarr's base classes


html_theme = "pydata_sphinx_theme"
html_title = f"relaylab {release}"
html_static_path = ["_static"]
html_css_files = ["relaylab.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 8,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
# the guide's pages are single pages: no left sidebar (api and its module pages keep the section navigation)
html_sidebars = {page: [] for page in ("index", "getting-started", "workflow", "formats", "explorer", "spray-config",
                                       "benchmarks", "cli")}


# ---------------------------------------------------------------------------------------------- docstrings
# relaylab's docstrings are written in a Markdown-like style for readers of the source. Four habits of that style
# are not valid reStructuredText (or not what Sphinx's NumPy-docstring support expects); they are rewritten here,
# rather than changed in the source:
#   `Problem`s            a plural after inline code         -> `Problem`\ s
#   |activation|          absolute values outside code       -> \|activation\|  (else a substitution reference)
#   labels_               a trailing underscore outside code -> labels\_       (else a link to a target)
#   Parameters            a section title inside a docstring -> a rubric, and its "name : description" entries
#   ----------                                               -> a definition list (name, then the description)
# Literal blocks (after a line ending in "::") are left as they are.

import re  # noqa: E402

_CODE = re.compile(r"(``.+?``|`[^`]+`)")
_TRAILING_UNDERSCORE = re.compile(r"(?<=[A-Za-z0-9])_(?=[\s.,;:)]|$)")


def _escape_prose(text: str) -> str:
    parts = _CODE.split(text)  # even parts lie outside inline code, odd ones are inline code
    for i in range(0, len(parts), 2):
        parts[i] = _TRAILING_UNDERSCORE.sub(r"\\_", parts[i].replace("|", r"\|"))
        if i and parts[i][:1].isalnum():
            parts[i] = "\\ " + parts[i]
    return "".join(parts)


_SECTION_ENTRY = re.compile(r"^(\s*)(\w+) : (.*)$")


def markdown_habits(app, what, name, obj, options, lines):
    literal_indent = None  # the indentation of the paragraph that opened a literal block
    section = False  # inside a titled section whose entries are "name : description"
    underline = False  # the next line underlines a section title
    out = []
    for i, line in enumerate(lines):
        if underline:
            underline = False
            continue
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not line.strip() or indent > literal_indent:
                out.append(line)
                continue
            literal_indent = None
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(following.strip()) == {"-"} and len(following.strip()) == len(line.strip()):
            out += [" " * indent + ".. rubric:: " + line.strip(), ""]
            section = underline = True
            continue
        if not line.strip():
            section = False
        entry = _SECTION_ENTRY.match(line) if section else None
        if entry:
            out += [entry[1] + entry[2], entry[1] + "    " + _escape_prose(entry[3])]
            continue
        out.append(_escape_prose(line))
        if line.rstrip().endswith("::"):
            literal_indent = indent
    lines[:] = out


def param_parameters(app, what, name, obj, options, lines):
    """A `param.Parameterized` class (the explorer's ViewState and views) gets a list of its parameters: each one's
    type, default and doc string, which param keeps on the Parameter objects rather than in docstrings."""
    if what != "class" or not hasattr(obj, "param") or not hasattr(obj.param, "objects"):
        return
    own = [n for n in obj.param.objects("existing") if n != "name" and n in vars(obj)]
    if not own:
        return
    lines += ["", ".. rubric:: Parameters (param)", ""]
    for n in own:
        parameter = obj.param[n]
        default = parameter.default
        shown = f"{default!r}" if not isinstance(default, (list, dict)) or len(repr(default)) < 60 else type(default).__name__
        objects = getattr(parameter, "objects", None)
        choices = f"; one of {', '.join(map(str, objects))}" if isinstance(objects, list) and 0 < len(objects) <= 30 else ""
        lines += [f"``{n}``", f"    {type(parameter).__name__}, default ``{shown}``{choices}"
                  + (f" — {_escape_prose(parameter.doc.strip())}" if parameter.doc else ""), ""]


def skip_member(app, what, name, obj, skip, options):
    # scikit-learn adds set_{fit,transform,...}_request to every estimator (metadata routing); its docstrings link
    # into scikit-learn's own documentation, and they say nothing about relaylab
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", markdown_habits)
    app.connect("autodoc-process-docstring", param_parameters)
    app.connect("autodoc-skip-member", skip_member)
