"""What the benchmark scripts share (not a benchmark itself)."""

from __future__ import annotations

from dask_batch.testing import TEST_CLUSTER_ENVIRONMENT


def cluster_environment(smoke: bool) -> dict[str, str] | None:
    """The extra environment of a benchmark's local gateway's clusters.

    A full run measures the product's default (None). A smoke run only
    checks that the script still works and its figures are not kept, so its
    clusters are as cheap as the test suite's: a 1 s event-loop tick, and
    workers forked by their nannies.
    """
    return dict(TEST_CLUSTER_ENVIRONMENT) if smoke else None
