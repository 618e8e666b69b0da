"""Bad input on the workflow paths: refused before any cluster, nothing stored.

The parsers of what users write (an ``--array`` spec, a cron line and its
time zone, a pipeline YAML file) are fed arbitrary input by hypothesis: the
only outcomes allowed are a value or a ``DaskBatchError`` with a message.
"""

from __future__ import annotations

import datetime

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_batch import DaskBatchError, Step, SubmitError
from dask_batch.core.tasks import MAX_ARRAY_ELEMENTS, parse_array
from dask_batch.workflows.pipelines import (
    MAX_PIPELINE_BYTES,
    build_pipeline,
    load_pipeline,
)
from dask_batch.workflows.schedules import Schedule, check_cron

JOB = "20260101-000000-000-00000001"


def nothing_stored(batch):
    root = batch.store.root
    found = batch.store.fs.find(root) if batch.store.fs.exists(root) else []
    return [p for p in found if "/.index/" not in p]


# -- arrays ----------------------------------------------------------------------
ranges = st.tuples(st.integers(0, 10**6), st.integers(0, 50), st.integers(1, 7)).map(
    lambda r: (r[0], r[0] + r[1], r[2])
)


def array_text(parts, limit):
    text = ",".join(
        f"{a}" if a == b else (f"{a}-{b}" if s == 1 else f"{a}-{b}:{s}")
        for a, b, s in parts
    )
    return text + (f"%{limit}" if limit else "")


@given(st.lists(ranges, min_size=1, max_size=5), st.integers(0, 100))
def test_an_array_spec_means_what_slurm_means(parts, limit):
    expected = [i for a, b, s in parts for i in range(a, b + 1, s)]
    try:
        indices, parsed_limit = parse_array(array_text(parts, limit))
    except SubmitError as exc:
        assert "--array" in str(exc)
        assert len(set(expected)) != len(expected)  # only an index named twice
        return
    assert indices == expected
    assert parsed_limit == (limit or None)


@given(st.text(max_size=40))
def test_any_array_text_is_parsed_or_refused_with_a_message(text):
    try:
        indices, limit = parse_array(text)
    except SubmitError as exc:
        assert repr(text) in str(exc)
        return
    assert 0 < len(indices) <= MAX_ARRAY_ELEMENTS
    assert limit is None or limit >= 1


@pytest.mark.parametrize(
    "spec, why",
    [
        ("0-999999999", f"more than {MAX_ARRAY_ELEMENTS} elements"),
        ("0-99999,100000-199999", f"more than {MAX_ARRAY_ELEMENTS} elements"),
        ("10-3", "empty range"),
        ("0-9%0", "limit"),
        ("0-9:0", "empty range"),
        ("1,1", "index twice"),
        ("a-b", "not an index or a range"),
    ],
)
def test_a_bad_array_spec_is_refused_with_its_reason(spec, why):
    with pytest.raises(SubmitError, match=why):
        parse_array(spec, JOB)


# -- cron ------------------------------------------------------------------------
cron_field = st.one_of(
    st.just("*"),
    st.integers(0, 70).map(str),
    st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.integers(1, 30).map(lambda n: f"*/{n}"),
    st.text(alphabet="0123456789*/,-LW#?abcMONFRI", min_size=1, max_size=6),
)
zones = st.sampled_from(
    ["UTC", "Europe/Paris", "America/New_York", "Nowhere/Atlantis", "", "../etc"]
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cron_field, min_size=1, max_size=7).map(" ".join), zones)
def test_any_cron_line_and_zone_is_accepted_and_fires_or_is_refused(cron, zone):
    try:
        check_cron(JOB, cron, zone)
    except SubmitError as exc:
        assert exc.job_id == JOB and str(exc)
        return
    after = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    schedule = Schedule(
        JOB, "alice", "s", cron, zone, "skip", False, after, "f", {}, "", ""
    )
    assert schedule.following(after) > after


@pytest.mark.parametrize(
    "cron, zone, why",
    [
        ("0 0 30 2 *", "UTC", "never comes"),
        ("0 0 31 4 *", "Europe/Paris", "never comes"),
        ("0 2 * *", "UTC", "not a cron expression"),
        ("0 2 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_a_cron_that_cannot_fire_is_refused_before_it_is_stored(
    batch_client, cron, zone, why
):
    with pytest.raises(SubmitError, match=why) as info:
        batch_client.schedule(print, cron=cron, timezone=zone, workers=0)
    assert info.value.job_id
    assert batch_client.schedules() == []
    assert nothing_stored(batch_client) == []


# -- pipeline YAML -----------------------------------------------------------------
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
steps = st.lists(
    st.fixed_dictionaries(
        {"source": st.sampled_from(["a.py", "b.py", "pkg.mod:fn"])},
        optional={
            "name": st.text(max_size=12) | st.sampled_from(["a/b", "..", "x", "y"]),
            "upstream": st.lists(
                st.sampled_from(["a", "b", "x", "y", "z"]), max_size=3
            ),
            "params": yaml_values,
        },
    ),
    max_size=5,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(yaml_values, st.fixed_dictionaries({"steps": steps}), st.text()))
def test_any_pipeline_file_is_loaded_or_refused_with_a_message(tmp_path, document):
    path = tmp_path / "pipeline.yaml"
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    path.write_text(text)
    for script in ("a.py", "b.py"):
        (tmp_path / script).write_text("print('step')\n")
    try:
        pipeline = load_pipeline(str(path), JOB)
        build_pipeline(JOB, pipeline.steps)
    except DaskBatchError as exc:
        assert str(exc)
        return


@pytest.mark.parametrize(
    "steps, why",
    [
        ([Step("a.py", name="x"), Step("b.py", name="x")], "two steps are named"),
        ([Step("a.py", name="a/b")], "not allowed"),
        ([Step("a.py", name="..")], "not allowed"),
        (
            [
                Step("a.py", name="x", upstream=["y"]),
                Step("b.py", name="y", upstream=["x"]),
            ],
            "cycle",
        ),
        ([Step("a.py", name="x", upstream=["nope"])], "not a step"),
    ],
)
def test_a_bad_pipeline_is_refused_before_anything_is_stored(
    batch_client, tmp_path, monkeypatch, steps, why
):
    for script in ("a.py", "b.py"):
        (tmp_path / script).write_text("print('step')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DaskBatchError, match=why):
        batch_client.submit_pipeline(steps, workers=0)
    assert nothing_stored(batch_client) == []


def test_a_pipeline_file_over_the_size_limit_is_refused(batch_client, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("steps: []\n#" + "x" * MAX_PIPELINE_BYTES)
    with pytest.raises(SubmitError, match="is over 1024 KiB"):
        batch_client.submit_pipeline(str(path), workers=0)
    assert nothing_stored(batch_client) == []


def test_the_command_line_refuses_bad_input_in_one_line(
    batch_gateway, tmp_path, monkeypatch
):
    import dask

    from dask_batch.cli import main

    script = tmp_path / "f.py"
    script.write_text("print('hi')\n")
    for key, value in batch_gateway.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DASK_BATCH__STORAGE", str(tmp_path / "jobs"))
    dask.config.refresh()
    runner = CliRunner()
    for args in (
        ["submit", str(script), "--array", "0-999999999"],
        ["submit", str(script), "--array", "5-1"],
        ["submit", str(script), "--array", "0-9%0"],
        ["schedule", "add", str(script), "--cron", "0 0 30 2 *"],
    ):
        out = runner.invoke(main, args)
        assert out.exit_code == 1, out.output
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("Error: ") and "Traceback" not in out.output
    assert not (tmp_path / "jobs").exists() or not any(
        p.name != ".index" for p in (tmp_path / "jobs").rglob("*") if p.is_file()
    )
