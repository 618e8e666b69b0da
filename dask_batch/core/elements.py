"""An array job's elements, kept in shards.

An array of up to 100,000 elements is one job. Its elements run on the job's
workers; main's process beside the scheduler only hands them out and keeps
their states. Those states live in *shards* of :data:`SHARD_SIZE` elements,
one small JSON document each (``elements/000000.json``, ...), so a change
rewrites one shard, never the whole array, and reading the counts needs no
shard at all (they are in the job's progress). Each shard's values are stored
together, signed with the job key, once every element of it has ended.

The array itself is declared in the job's signed spec (``spec["array"]``):
how many elements, their indices (Slurm's ``--array`` may skip some), and
the shard size they were written with.

Shared by the client and main's process: no I/O here.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.records import ErrorInfo, JobState, _count, _text

__all__: list[str] = []

#: Elements per shard: a shard document stays under ~100 kB.
SHARD_SIZE = 1000
ELEMENTS_DIR = "elements"

_CODES = {
    JobState.PENDING: "P",
    JobState.RUNNING: "R",
    JobState.SUCCEEDED: "S",
    JobState.FAILED: "F",
    JobState.CANCELLED: "C",
    JobState.LOST: "L",
}
_STATES = {code: state for state, code in _CODES.items()}


def shard_doc_name(shard: int) -> str:
    """A shard's state document, relative to the job's folder."""
    return f"{ELEMENTS_DIR}/{int(shard):06d}.json"


def shard_result_name(shard: int) -> str:
    """A shard's stored values, relative to the job's folder."""
    return f"{ELEMENTS_DIR}/{int(shard):06d}.result"


@dataclass(frozen=True)
class ArrayShape:
    """Which indices an array has, as its signed spec declares them.

    ``spans`` are ``(first, last, step)`` triples, as parsed from Slurm's
    syntax (a function array is the one span ``(0, n - 1, 1)``); position
    ``p`` of the array is its ``p``-th index.
    """

    spans: tuple[tuple[int, int, int], ...]
    shard_size: int = SHARD_SIZE

    @classmethod
    def of_count(cls, count: int) -> ArrayShape:
        return cls(((0, count - 1, 1),))

    @property
    def count(self) -> int:
        return sum(len(range(a, b + 1, s)) for a, b, s in self.spans)

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def indices(self) -> Iterator[int]:
        for first, last, step in self.spans:
            yield from range(first, last + 1, step)

    def shard_of(self, position: int) -> int:
        return position // self.shard_size

    def positions(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.count))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "spans": [list(span) for span in self.spans],
            "shard_size": self.shard_size,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ArrayShape | None:
        """The array a spec declares (None: not a sharded array).

        Raises ValueError when the declaration cannot be read.
        """
        doc = spec.get("array")
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise ValueError("the array declaration is not an object")
        spans = []
        for span in doc.get("spans") or []:
            if (
                not isinstance(span, list)
                or len(span) != 3
                or not all(isinstance(v, int) and v >= 0 for v in span)
                or span[1] < span[0]
                or span[2] < 1
            ):
                raise ValueError(f"bad span {span!r} in the array declaration")
            spans.append((span[0], span[1], span[2]))
        size = doc.get("shard_size")
        if not isinstance(size, int) or size < 1 or not spans:
            raise ValueError("the array declaration has no elements or shard size")
        shape = cls(tuple(spans), size)
        if shape.count != doc.get("count"):
            raise ValueError("the array declaration's count does not match")
        return shape


@dataclass
class Shard:
    """How the elements of one shard went.

    ``states`` holds one letter per element (P, R, S, F, C, L); the other
    fields name only the elements they concern, by position in the array.
    """

    number: int
    first: int
    states: list[JobState]
    attempts: dict[int, int] = field(default_factory=dict)
    errors: dict[int, dict[str, Any]] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    reused_from: dict[int, str] = field(default_factory=dict)
    #: The stored values: digest, signature, bytes ({} until stored).
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, shape: ArrayShape, number: int) -> Shard:
        positions = shape.positions(number)
        return cls(number, positions.start, [JobState.PENDING] * len(positions))

    def all_ended(self) -> bool:
        return all(state.is_terminal for state in self.states)

    def state(self, position: int) -> JobState:
        return self.states[position - self.first]

    def set(self, position: int, state: JobState) -> None:
        self.states[position - self.first] = state

    def to_dict(self) -> dict[str, Any]:
        def keyed(values: dict[int, Any]) -> dict[str, Any]:
            return {str(k): v for k, v in sorted(values.items())}

        return {
            "shard": self.number,
            "first": self.first,
            "states": "".join(_CODES[s] for s in self.states),
            "attempts": keyed(self.attempts),
            "errors": keyed(self.errors),
            "started": keyed(self.started),
            "finished": keyed(self.finished),
            "reused_from": keyed(self.reused_from),
            "result": dict(self.result),
        }

    @classmethod
    def from_dict(cls, shape: ArrayShape, number: int, doc: Any) -> Shard:
        """A shard as stored, every field checked against the signed shape.

        Raises ValueError or TypeError on a document that does not fit.
        """
        expected = shape.positions(number)
        if not isinstance(doc, dict) or doc.get("first") != expected.start:
            raise ValueError(f"shard {number} is not where the array puts it")
        letters = doc.get("states")
        if not isinstance(letters, str) or len(letters) != len(expected):
            raise ValueError(f"shard {number} does not hold {len(expected)} states")
        shard = cls(number, expected.start, [_STATES[c] for c in letters])

        def positions(name: str, check: Any) -> dict[int, Any]:
            found = doc.get(name) or {}
            if not isinstance(found, dict):
                raise TypeError(f"{name} of shard {number} is not an object")
            out = {}
            for key, value in found.items():
                position = int(key)
                if position in expected and check(value):
                    out[position] = value
            return out

        shard.attempts = positions("attempts", lambda v: _count(v) is not None)
        shard.errors = {
            p: ErrorInfo.from_dict(e).to_dict()
            for p, e in positions("errors", lambda v: isinstance(v, dict)).items()
        }
        number_ok = lambda v: isinstance(v, (int, float))  # noqa: E731
        shard.started = positions("started", number_ok)
        shard.finished = positions("finished", number_ok)
        shard.reused_from = positions("reused_from", lambda v: isinstance(v, str))
        result = doc.get("result") or {}
        if isinstance(result, dict):
            shard.result = {
                "digest": _text(result.get("digest")),
                "hmac": _text(result.get("hmac")),
                "bytes": _count(result.get("bytes")),
            }
        return shard


def counts_of(shards: Iterable[Shard]) -> dict[str, int]:
    """Elements per state, in :class:`JobState` order (empty states left out)."""
    counts: dict[str, int] = {}
    for shard in shards:
        for state in shard.states:
            counts[state.value] = counts.get(state.value, 0) + 1
    return {s.value: counts[s.value] for s in JobState if s.value in counts}


def moment(value: float | None) -> datetime.datetime | None:
    """A stored epoch time as an aware datetime."""
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
