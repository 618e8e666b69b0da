"""Load the ``batch.*`` defaults into ``dask.config``."""

from __future__ import annotations

import os

import dask.config
import yaml

_fn = os.path.join(os.path.dirname(__file__), "batch.yaml")

with open(_fn) as f:
    defaults = yaml.safe_load(f)

dask.config.update_defaults(defaults)
