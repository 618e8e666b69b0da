"""Sphinx configuration for the dask-batch documentation."""

import dask_batch

project = "dask-batch"
author = "dask-batch developers"
copyright = "2026, dask-batch developers"
version = release = dask_batch.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_click",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections say it
suppress_warnings = ["config.cache"]
# The theme of the Dask projects users already read (dask, distributed,
# dask-gateway). Its page is ours in _templates, without the tag manager.
html_theme = "dask_sphinx_theme"
templates_path = ["_templates"]
html_title = "dask-batch"
html_static_path = ["_static"]
