"""In-memory tables for the three shapes of user data: catalog, judgments, interactions/sequences.

Columns are numpy arrays so the ``tf.data`` pipelines slice them without per-row Python loops.
Products and items are referred to by their row in the catalog (``int32`` index) once loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from tfrec.data.errors import DropReport


def _strings(values) -> np.ndarray:
    return np.asarray(values, dtype=object)


@dataclass
class Catalog:
    """Products: an id, text fields, optional numeric and categorical features."""

    ids: np.ndarray  # object array of str, unique
    texts: dict[str, np.ndarray]  # field name -> object array of str
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 (NaN = missing)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # name -> object array of str
    source: str = ""

    def __post_init__(self) -> None:
        self.ids = _strings(self.ids)
        self._index = {pid: i for i, pid in enumerate(self.ids.tolist())}
        if len(self._index) != len(self.ids):
            raise ValueError("catalog ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, ids) -> np.ndarray:
        """Map ids to catalog rows (int32); unknown ids map to -1."""
        lookup = self._index.get
        return np.fromiter((lookup(i, -1) for i in ids), dtype=np.int32, count=len(ids))

    def text(self, fields: Optional[list[str]] = None, separator: str = " ") -> np.ndarray:
        """One text per product: the given text fields (default: all) joined by ``separator``."""
        names = fields or list(self.texts)
        columns = [self.texts[n] for n in names]
        if len(columns) == 1:
            return columns[0]
        joined = [separator.join(p for p in parts if p) for parts in zip(*columns)]
        return _strings(joined)


@dataclass
class Judgments:
    """Search judgments: (query, product row, graded label) triples."""

    queries: np.ndarray  # object array of str
    products: np.ndarray  # int32 catalog rows
    labels: np.ndarray  # float32
    source: str = ""

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def n_queries(self) -> int:
        """Number of distinct queries."""
        return len(np.unique(self.queries.astype(str))) if len(self) else 0

    def take(self, keep: np.ndarray) -> "Judgments":
        """The judgments at ``keep`` (a bool mask or row indices), in that order."""
        return Judgments(self.queries[keep], self.products[keep], self.labels[keep], self.source)

    def held_out_queries(self, fraction: float, seed: int) -> np.ndarray:
        """bool [len]: the judgments of a seeded random ``fraction`` of the distinct queries (the ranker's share)."""
        queries = np.unique(self.queries.astype(str))
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(queries)[: int(round(len(queries) * fraction))].tolist())
        return np.fromiter((q in held for q in self.queries), bool, count=len(self))


@dataclass
class Interactions:
    """An interaction log: (user, item row, timestamp[, rating]) events."""

    users: np.ndarray  # object array of str
    items: np.ndarray  # int32 catalog rows
    timestamps: np.ndarray  # int64
    ratings: Optional[np.ndarray] = None  # float32
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Sequences:
    """(history -> next item) examples; histories are slices ``items[start:end]`` of a flat array.

    Prefix histories of one user share the user's slice of ``items``, so building every
    prefix of a long log costs no copies.
    """

    items: np.ndarray  # int32 catalog rows, the concatenated histories
    starts: np.ndarray  # int64, one per example
    ends: np.ndarray  # int64, one per example (exclusive)
    targets: np.ndarray  # int32 catalog rows
    users: np.ndarray  # object array of str
    source: str = ""

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, rows: np.ndarray) -> "Sequences":
        """The examples at ``rows`` (indices or a boolean mask); the flat item array is shared, not copied."""
        return Sequences(items=self.items, starts=self.starts[rows], ends=self.ends[rows], targets=self.targets[rows],
                         users=self.users[rows], source=self.source)

    def newest_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(rest rows, newest rows): each user's example with the longest history, and every other example."""
        order = np.lexsort((self.ends - self.starts, self.users.astype(str)))
        users = self.users.astype(str)[order]
        last = np.ones(len(order), bool)
        last[:-1] = users[1:] != users[:-1]
        newest = np.sort(order[last])
        return np.setdiff1d(np.arange(len(self)), newest), newest

    def history_lengths(self) -> np.ndarray:
        """Length of each example's history."""
        return (self.ends - self.starts).astype(np.int64)

    def padded_histories(self, max_history: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ([n, max_history] int32 rows padded with -1 at the front, [n] lengths kept).

        The most recent ``max_history`` items are kept, the newest in the last column, which
        is what causal sequence encoders expect.
        """
        kept = np.minimum(self.ends - self.starts, max_history)
        offsets = np.arange(max_history) - max_history  # -H .. -1, relative to each end
        positions = self.ends[:, None] + offsets[None, :]
        valid = offsets[None, :] >= -kept[:, None]
        gathered = self.items[np.where(valid, positions, 0)] if len(self.items) else np.zeros(positions.shape, np.int32)
        return np.where(valid, gathered, -1).astype(np.int32), kept.astype(np.int32)


@dataclass
class SearchData:
    """A catalog with train and valid search judgments."""

    catalog: Catalog
    train: Judgments
    valid: Judgments
    drops: DropReport = field(default_factory=DropReport)
    name: str = ""


@dataclass
class RecommendationData:
    """A catalog with train and valid (history -> next item) examples, and the raw log if any.

    From a prepared dataset (``data.prepared``), ``train`` is a
    :class:`~tfrec.data.prepared.reader.ShardedSequences`: the examples stay in their shards.
    """

    catalog: Catalog
    train: Sequences  # or ShardedSequences (a prepared dataset)
    valid: Sequences
    interactions: Optional[Interactions] = None
    drops: DropReport = field(default_factory=DropReport)
    name: str = ""


# What a config's data loads as: search (catalog + judgments) or recommendation (catalog + sequences).
Dataset = Union[SearchData, RecommendationData]
