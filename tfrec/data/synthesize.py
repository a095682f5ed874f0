"""A synthetic shop of any size for scale and speed tests: catalog, interaction log, search judgments, configs.

``tfrec data synthesize`` calls :func:`synthesize`. The data has the shapes real shop data has,
so the pipelines and models meet realistic work: Zipf item popularity (ids shuffled, so
popularity does not follow the id), products in categories with titles built from a vocabulary
(brand, colour, material, kind, size and a unique model code), users with a preferred category,
per-user sessions (minutes apart inside a session, hours or days between them), re-views of
earlier items, and "also viewed" neighbours of the previous item. Events per user are
heavy-tailed and sum to the requested count exactly. The log is written in blocks of users, each
block sorted by time, like a real log (not grouped by user).

It is generated in chunks of users with numpy and written with pyarrow, so memory stays bounded
whatever the size; the same arguments and seed give byte-identical files. Metrics measured on
this data say how fast tfrec runs, never how good a model is.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np

from tfrec.log import Progress

log = logging.getLogger(__name__)

Format = Literal["csv", "parquet"]
FORMATS = ("csv", "parquet")

# Popularity: item of rank r (0 = most viewed) has weight (r + 1) ** -ZIPF_EXPONENT.
ZIPF_EXPONENT = 1.1
# The log starts 2023-01-01 00:00 UTC and covers about a year.
LOG_START = 1_672_531_200
LOG_DAYS = 365
# Events per user: 1 + a share of the rest proportional to a log-normal weight (a heavy tail).
USER_WEIGHT_SIGMA = 1.2
# How the next event of a user is chosen.
NEW_SESSION = 0.2           # an event starts a new session
REPEAT_AT_SESSION_START = 0.25  # a new session returns to an earlier item
REPEAT_IN_SESSION = 0.10    # inside a session: a re-view of an earlier item ...
NEIGHBOUR_IN_SESSION = 0.45  # ... or a neighbour ("also viewed") of the previous item; else a fresh pick
PREFERRED_CATEGORY = 0.6    # a fresh pick comes from the user's preferred category, else from the whole shop
REPEAT_RECENCY = 4.0        # mean number of events a re-view looks back past
NEIGHBOURS = 6              # fixed neighbours per product, in its category, skewed to popular ones
# Gaps in seconds: inside a session ~ a minute or two; between sessions at least half an hour,
# hours to days on average (scaled so a user's sessions mostly fit in the log's year).
SESSION_GAP_MEDIAN = 75.0
SESSION_GAP_SIGMA = 0.9
BREAK_MIN = 1800
BREAK_MEAN_MIN, BREAK_MEAN_MAX = 3600.0, 14 * 86400.0
# Events generated per chunk: sized so a chunk's arrays stay in the low hundreds of MB.
CHUNK_EVENTS = 1 << 19
CHUNK_PRODUCTS = 1 << 19
CHUNK_JUDGMENTS = 1 << 19
# Search judgments: products judged per query (1 + Poisson), and a query's words beside its kind.
JUDGED_PER_QUERY = 7.0
QUERY_BRAND, QUERY_COLOUR, QUERY_MATERIAL = 0.3, 0.4, 0.3
JUDGED_SAME_CATEGORY = 0.7
# A query is a valid query when crc32(query) % VALID_BUCKETS == 0 (about 10%).
VALID_BUCKETS = 10

# Random streams, one per purpose, so each part of the data is fixed by the seed alone.
_CATALOG, _USER_WEIGHTS, _CHUNK_TOTALS, _USER_COUNTS, _EVENTS, _JUDGMENTS = range(6)

DEPARTMENTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("Tools", ("Hammer", "Screwdriver", "Wrench", "Drill", "Circular Saw", "Pliers", "Tape Measure", "Level", "Chisel", "Utility Knife"),
     ("Steel", "Fiberglass", "Hickory", "Aluminum", "Carbon"), ("6 in", "8 in", "10 in", "12 in", "16 in", "24 in")),
    ("Kitchen", ("Skillet", "Saucepan", "Stock Pot", "Cutting Board", "Chef Knife", "Mixing Bowl", "Colander", "Kettle", "Spatula", "Baking Sheet"),
     ("Stainless", "Cast Iron", "Ceramic", "Bamboo", "Glass", "Copper"), ("8 in", "10 in", "12 in", "2 qt", "4 qt", "6 qt")),
    ("Garden", ("Garden Hose", "Rake", "Shovel", "Planter", "Pruner", "Sprinkler", "Wheelbarrow", "Trowel", "Watering Can", "Lawn Edger"),
     ("Rubber", "Steel", "Resin", "Terracotta", "Aluminum"), ("25 ft", "50 ft", "75 ft", "100 ft", "5 gal", "10 gal")),
    ("Lighting", ("Table Lamp", "Pendant Light", "Floor Lamp", "LED Bulb", "Ceiling Fan", "Sconce", "Flashlight", "String Lights", "Lantern", "Chandelier"),
     ("Brass", "Glass", "Nickel", "Bronze", "Linen"), ("40 W", "60 W", "75 W", "100 W", "2 pack", "4 pack")),
    ("Bath", ("Faucet", "Shower Head", "Towel Bar", "Vanity Mirror", "Toilet Seat", "Bath Mat", "Soap Dispenser", "Shower Curtain", "Grab Bar", "Vessel Sink"),
     ("Chrome", "Porcelain", "Cotton", "Nickel", "Brass"), ("12 in", "18 in", "24 in", "30 in", "36 in", "48 in")),
    ("Paint", ("Interior Paint", "Exterior Paint", "Primer", "Paint Roller", "Paint Brush", "Drop Cloth", "Spray Paint", "Wood Stain", "Caulk", "Painter Tape"),
     ("Latex", "Oil Based", "Acrylic", "Enamel", "Polyester"), ("1 qt", "1 gal", "5 gal", "12 oz", "2 in", "3 in")),
    ("Flooring", ("Vinyl Plank", "Laminate", "Floor Tile", "Carpet", "Area Rug", "Underlayment", "Grout", "Floor Mat", "Hardwood", "Stair Tread"),
     ("Oak", "Maple", "Porcelain", "Vinyl", "Wool", "Cork"), ("12 in", "18 in", "24 in", "5x8 ft", "8x10 ft", "2x3 ft")),
    ("Electrical", ("Outlet", "Light Switch", "Extension Cord", "Circuit Breaker", "Electrical Wire", "Dimmer", "Surge Protector", "Junction Box", "Smoke Detector", "Doorbell"),
     ("Copper", "Plastic", "Nickel", "Steel"), ("15 A", "20 A", "6 ft", "25 ft", "50 ft", "2 pack")),
    ("Storage", ("Shelf", "Storage Bin", "Tool Chest", "Cabinet", "Wall Hook", "Garage Rack", "Drawer Organizer", "Closet System", "Pegboard", "Step Stool"),
     ("Steel", "Plastic", "Pine", "Wire", "Resin"), ("24 in", "36 in", "48 in", "72 in", "18 gal", "27 gal")),
    ("Outdoor", ("Patio Chair", "Grill", "Fire Pit", "Patio Umbrella", "Hammock", "Cooler", "Bird Feeder", "Outdoor Rug", "Patio Table", "Fence Panel"),
     ("Teak", "Aluminum", "Wicker", "Steel", "Cedar"), ("2 pc", "3 pc", "5 pc", "6 ft", "8 ft", "48 qt")),
    ("Plumbing", ("Pipe", "Ball Valve", "Water Heater", "Sump Pump", "Shower Drain", "Pipe Fitting", "Water Filter", "Garbage Disposal", "Plunger", "Hose Bib"),
     ("PVC", "Copper", "Brass", "PEX", "Galvanized"), ("1/2 in", "3/4 in", "1 in", "2 in", "40 gal", "50 gal")),
    ("Hardware", ("Door Knob", "Hinge", "Deadbolt", "Wood Screw", "Nail", "Wall Anchor", "Cabinet Pull", "Padlock", "Hex Bolt", "Washer"),
     ("Brass", "Zinc", "Steel", "Nickel", "Bronze"), ("1 in", "2 in", "3 in", "10 pack", "50 pack", "100 pack")),
)
BRANDS = ("Acornfield", "Bramwell", "Cedarline", "Dunmore", "Everholt", "Fairhaven", "Granitex", "Harborline",
          "Ironvale", "Junipro", "Keystoke", "Larkmont", "Meridale", "Northgrove", "Oakhurst", "Pinecrest",
          "Quarrystone", "Redhollow", "Stonebrook", "Timbercraft", "Uplander", "Vantora", "Westbury", "Yardwell",
          "Zenbrook", "Alderton", "Birchwood", "Cobaltix", "Driftmark", "Elmstead", "Foxglen", "Glenmore",
          "Hollowell", "Ironbark", "Kettleby", "Lumenor", "Marlowe", "Nordvik", "Orchard Lane", "Prairiecraft")
COLOURS = ("Black", "White", "Gray", "Silver", "Red", "Blue", "Green", "Brown", "Beige", "Navy", "Yellow",
           "Orange", "Teal", "Ivory", "Charcoal", "Olive")
BRANDS_PER_CATEGORY = 6


class SynthesizeError(ValueError):
    """Arguments that describe no shop (fewer events than users, no products, ...)."""


@dataclass(frozen=True)
class ShopSize:
    """What to generate: counts, file format and seed."""

    products: int
    users: int
    events: int
    judgments: int = 0
    format: Format = "csv"
    seed: int = 0

    def check(self) -> None:
        """Raise a SynthesizeError naming the first argument that makes no sense."""
        for name in ("products", "users", "events", "judgments", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SynthesizeError("--%s must be a whole number, got %r" % (name, value))
        if self.products < 1:
            raise SynthesizeError("--products must be at least 1, got %d" % self.products)
        if self.users < 1:
            raise SynthesizeError("--users must be at least 1, got %d" % self.users)
        if self.events < self.users:
            raise SynthesizeError("--events (%d) must be at least --users (%d): every user has one event or more"
                                  % (self.events, self.users))
        if self.judgments < 0:
            raise SynthesizeError("--judgments must be 0 (none) or more, got %d" % self.judgments)
        if not 0 <= self.seed < 2**63:
            raise SynthesizeError("--seed must be a whole number from 0 to 2**63-1, got %d" % self.seed)
        if self.format not in FORMATS:
            raise SynthesizeError("--format must be csv or parquet, got %r" % self.format)


@dataclass(frozen=True)
class WrittenFile:
    """One file :func:`synthesize` wrote: where, what and how many rows."""

    path: Path
    what: str
    rows: Optional[int] = None

    def describe(self) -> str:
        """``<path> (<rows> <what>, <size>)``: the line the CLI prints."""
        size = _size(self.path.stat().st_size)
        if self.rows is None:
            return "%s (%s, %s)" % (self.path, self.what, size)
        what = self.what[:-1] if self.rows == 1 and self.what.endswith("s") else self.what
        return "%s (%s %s, %s)" % (self.path, "{:,}".format(self.rows), what, size)


def parse_count(text: str) -> int:
    """A count as typed on the command line: ``5000000``, ``5_000_000``, ``5M``, ``250k``, ``1e6``."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?(?:[eE]\d+)?)([kKmMgGbB]?)", cleaned)
    if not match:
        raise ValueError("expected a whole number such as 5000000, 5M or 250k, got %r" % text)
    number, suffix = match.groups()
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[suffix.lower()]
    value = float(number) * scale
    if value != int(value) or abs(value) > 2**62:
        raise ValueError("expected a whole number such as 5000000, 5M or 250k, got %r" % text)
    return int(value)


def file_names(fmt: Format, judgments: bool) -> dict[str, str]:
    """The files a shop consists of, by role: products, interactions and, with judgments, train/valid."""
    names = {"products": "products." + fmt, "interactions": "interactions." + fmt}
    if judgments:
        names.update(train="train." + fmt, valid="valid." + fmt)
    return names


CONFIG_FILE = "tfrec.yaml"
SEARCH_CONFIG_FILE = "search.yaml"


def synthesize(out: str | Path, size: ShopSize, *, force: bool = False, progress: bool = True) -> list[WrittenFile]:
    """Write a synthetic shop into ``out``: catalog, interaction log, optional judgments, and the configs that read them.

    Every file is written under a temporary name and renamed once all are complete; existing files
    are replaced only with ``force``.
    """
    size.check()
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError("%s is a file, not a folder" % folder)
    names = file_names(size.format, size.judgments > 0)
    targets = list(names.values()) + [CONFIG_FILE] + ([SEARCH_CONFIG_FILE] if size.judgments else [])
    existing = [name for name in targets if (folder / name).exists()]
    if existing and not force:
        raise FileExistsError("%s already holds %s; pass --force to replace them" % (folder, ", ".join(existing)))
    if force and not size.judgments and (folder / SEARCH_CONFIG_FILE).exists():
        log.warning("%s is left as it was: it reads judgments of an earlier shop, not of this one", folder / SEARCH_CONFIG_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()

    partial: dict[str, Path] = {}  # final name -> temporary path

    def temporary(name: str) -> Path:
        partial[name] = folder / (".%s.partial" % name)
        return partial[name]

    written: list[WrittenFile] = []
    try:
        shop = Catalog.generate(size.products, size.seed)
        rows = write_products(shop, temporary(names["products"]), size.format, progress=progress)
        written.append(WrittenFile(folder / names["products"], "products", rows))
        rows = write_interactions(shop, size, temporary(names["interactions"]), progress=progress)
        written.append(WrittenFile(folder / names["interactions"], "events", rows))
        if size.judgments:
            counts = write_judgments(shop, size, temporary(names["train"]), temporary(names["valid"]))
            written.append(WrittenFile(folder / names["train"], "judgments", counts[0]))
            written.append(WrittenFile(folder / names["valid"], "judgments", counts[1]))
        temporary(CONFIG_FILE).write_text(recommend_config(folder, names, size), encoding="utf-8")
        written.append(WrittenFile(folder / CONFIG_FILE, "interactions-csv config"))
        if size.judgments:
            temporary(SEARCH_CONFIG_FILE).write_text(search_config(folder, names, size), encoding="utf-8")
            written.append(WrittenFile(folder / SEARCH_CONFIG_FILE, "search-csv config"))
        for name, path in partial.items():  # configs last: they were added last
            os.replace(path, folder / name)
        partial.clear()
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return written


# ----------------------------------------------------------------------------- catalog


def _rng(seed: int, stream: int, part: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, part])


def zipf_ranks(u: np.ndarray, n: Any) -> np.ndarray:
    """Ranks in [0, n) for uniforms ``u``, with P(rank r) about proportional to (r + 1) ** -ZIPF_EXPONENT (n may vary per draw)."""
    # The inverse CDF of a power law on [1, n + 1): exact in O(1) per draw, no table of n weights.
    a = 1.0 - ZIPF_EXPONENT
    top = np.power(np.asarray(n, dtype=np.float64) + 1.0, a)
    x = np.power(1.0 - u * (1.0 - top), 1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, np.asarray(n, dtype=np.int64) - 1).clip(0)


@dataclass
class Catalog:
    """The generated products: attributes, popularity ranks, categories and each product's neighbours."""

    category: np.ndarray      # int32 per product: index into the shop's categories
    brand: np.ndarray         # int16 per product: index into BRANDS
    colour: np.ndarray        # int16: index into COLOURS
    material: np.ndarray      # int16: index into MATERIALS
    size: np.ndarray          # int16: index into SIZES
    price: np.ndarray         # float64
    quality: np.ndarray       # float32: mean rating
    by_rank: np.ndarray       # int32: product of popularity rank r
    members: np.ndarray       # int32: products sorted by (category, rank)
    category_start: np.ndarray  # int64: members[category_start[c]:category_start[c + 1]] are category c's products
    neighbours: np.ndarray    # int32 (products, NEIGHBOURS)
    kinds: list[tuple[int, int]] = field(default_factory=list)  # category -> (department, kind)

    @classmethod
    def generate(cls, n: int, seed: int) -> "Catalog":
        """``n`` products in about n / 40 categories (at most 120), popularity shuffled against the ids."""
        rng = _rng(seed, _CATALOG)
        all_kinds = [(d, k) for d, dept in enumerate(DEPARTMENTS) for k in range(len(dept[1]))]
        n_cat = int(min(len(all_kinds), max(1, math.ceil(n / 40))))
        kinds = [all_kinds[i] for i in rng.permutation(len(all_kinds))[:n_cat]]
        share = rng.lognormal(0.0, 0.5, n_cat)
        category = rng.choice(n_cat, size=n, p=share / share.sum()).astype(np.int32)
        rank = rng.permutation(n).astype(np.int32)
        by_rank = np.empty(n, np.int32)
        by_rank[rank] = np.arange(n, dtype=np.int32)
        members = np.lexsort((rank, category)).astype(np.int32)
        counts = np.bincount(category, minlength=n_cat)
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        position = np.empty(n, np.int64)
        position[members] = np.arange(n) - start[category[members]]

        cat_size = counts[category][:, None]
        # Skewed to the category's popular products: "also viewed" lists favour what sells.
        q = (cat_size * rng.random((n, NEIGHBOURS)) ** 3).astype(np.int64)
        q = np.where(q == position[:, None], (q + 1) % cat_size, q)
        neighbours = members[start[category][:, None] + q]

        dept = np.array([d for d, _ in kinds], np.int16)[category]
        brand_sets = np.stack([rng.choice(len(BRANDS), BRANDS_PER_CATEGORY, replace=False) for _ in range(n_cat)])
        brand = brand_sets[category, rng.integers(0, BRANDS_PER_CATEGORY, n)].astype(np.int16)
        colour = rng.integers(0, len(COLOURS), n).astype(np.int16)
        n_mat = np.array([len(d[2]) for d in DEPARTMENTS])
        material = (MATERIAL_START[dept] + (rng.random(n) * n_mat[dept]).astype(np.int64)).astype(np.int16)
        size = (SIZE_START[dept] + (rng.random(n) * SIZES_PER_DEPT[dept]).astype(np.int64)).astype(np.int16)
        median = np.exp(rng.normal(math.log(30.0), 0.9, n_cat))
        raw = median[category] * np.exp(rng.normal(0.0, 0.5, n))
        price = np.where(raw >= 1.0, np.floor(raw) + 0.99, np.round(np.maximum(raw, 0.05), 2))
        quality = rng.normal(3.9, 0.6, n).astype(np.float32)
        return cls(category, brand, colour, material, size, price, quality, by_rank, members, start, neighbours, kinds)

    def __len__(self) -> int:
        return len(self.category)

    def category_names(self) -> list[str]:
        """Each category's name, ``Department > Kind``."""
        return ["%s > %s" % (DEPARTMENTS[d][0], DEPARTMENTS[d][1][k]) for d, k in self.kinds]

    def kind_names(self) -> list[str]:
        """The kind word(s) of each category, as titles use them."""
        return [DEPARTMENTS[d][1][k] for d, k in self.kinds]


MATERIALS = [m for dept in DEPARTMENTS for m in dept[2]]
MATERIAL_START = np.cumsum([0] + [len(d[2]) for d in DEPARTMENTS])[:-1]
SIZES = [s for dept in DEPARTMENTS for s in dept[3]]
SIZE_START = np.cumsum([0] + [len(d[3]) for d in DEPARTMENTS])[:-1]
SIZES_PER_DEPT = np.array([len(d[3]) for d in DEPARTMENTS])


def _id_width(n: int) -> int:
    return max(6, len(str(n)))


def product_ids(first: int, last: int, n: int) -> Any:
    """Product ids ``P000001``... of products ``first`` to ``last - 1`` (of ``n``), as a pyarrow array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numbers = pc.cast(pa.array(np.arange(first + 1, last + 1, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise("P", pc.utf8_lpad(numbers, _id_width(n), padding="0"), "")


def _scramble(index: np.ndarray, n: int, multiplier: int) -> np.ndarray:
    """A fixed permutation of [0, n) applied to ``index``: (i * a + b) mod n with a coprime to n."""
    while math.gcd(multiplier, n) != 1:
        multiplier += 2
    return (index.astype(np.int64) * (multiplier % n) + int(n * 0.6180339887)) % n if n > 1 else index.astype(np.int64)


def _strings(values: list[str], index: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string()).take(pa.array(index))


def product_table(shop: Catalog, first: int, last: int) -> Any:
    """Rows ``first`` to ``last - 1`` of the catalog as a pyarrow table (product_id, title, price, category)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(shop)
    part = slice(first, last)
    digits = max(5, len(str(n - 1)))
    code = _scramble(np.arange(first, last), 10**digits, 7_368_787)  # model numbers look random yet never repeat
    codes = pc.binary_join_element_wise(
        _strings([b[:2].upper() for b in BRANDS], shop.brand[part]),
        pc.utf8_lpad(pc.cast(pa.array(code), pa.string()), digits, padding="0"), "-")
    title = pc.binary_join_element_wise(
        _strings(list(BRANDS), shop.brand[part]), _strings(list(COLOURS), shop.colour[part]),
        _strings(MATERIALS, shop.material[part]), _strings(shop.kind_names(), shop.category[part]),
        _strings(SIZES, shop.size[part]), codes, " ")
    return pa.table({
        "product_id": product_ids(first, last, n),
        "title": title,
        "price": pa.array(shop.price[part], pa.float64()),
        "category": _strings(shop.category_names(), shop.category[part]),
    })


class _TableWriter:
    """Tables appended to one CSV (plain header, no quotes: generated values hold no commas or quotes) or Parquet file."""

    def __init__(self, path: Path, fmt: Format, schema: Any) -> None:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        self.file = open(path, "wb")
        if fmt == "csv":
            self.file.write((",".join(schema.names) + "\n").encode("utf-8"))
            options = pcsv.WriteOptions(include_header=False, quoting_style="none")
            self.writer: Any = pcsv.CSVWriter(self.file, schema, write_options=options)
        else:
            self.writer = pq.ParquetWriter(self.file, schema)

    def write(self, table: Any) -> None:
        self.writer.write_table(table)

    def __enter__(self) -> "_TableWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.writer.close()
        finally:
            self.file.close()


def write_products(shop: Catalog, path: Path, fmt: Format, *, progress: bool = True) -> int:
    """Write the catalog to ``path``; returns the number of products."""
    n = len(shop)
    writer: Optional[_TableWriter] = None
    with Progress("products", n, logger=log, unit="product", show=progress) as bar:
        try:
            for first in range(0, n, CHUNK_PRODUCTS):
                table = product_table(shop, first, min(n, first + CHUNK_PRODUCTS))
                if writer is None:
                    writer = _TableWriter(path, fmt, table.schema)
                writer.write(table)
                bar.update(table.num_rows)
        finally:
            if writer is not None:
                writer.__exit__()
    return n


# ----------------------------------------------------------------------------- interactions


def user_chunks(size: ShopSize) -> Iterator[tuple[int, int, np.ndarray]]:
    """(chunk index, first user, events of each user in the chunk); the counts are heavy-tailed and sum to ``size.events``."""
    users, events = size.users, size.events
    per_chunk = int(max(1, min(users, CHUNK_EVENTS * users // events)))
    n_chunks = -(-users // per_chunk)
    bounds = [(c * per_chunk, min(users, (c + 1) * per_chunk)) for c in range(n_chunks)]

    def weights(c: int) -> np.ndarray:
        first, last = bounds[c]
        return _rng(size.seed, _USER_WEIGHTS, c).lognormal(0.0, USER_WEIGHT_SIGMA, last - first)

    # Two levels of one multinomial: events to chunks by their users' total weight, then to users.
    # Only one chunk's users are in memory at a time, and the total is exact.
    sums = np.array([weights(c).sum() for c in range(n_chunks)])
    extra = _rng(size.seed, _CHUNK_TOTALS).multinomial(events - users, sums / sums.sum())
    for c, (first, last) in enumerate(bounds):
        w = weights(c)
        counts = 1 + _rng(size.seed, _USER_COUNTS, c).multinomial(int(extra[c]), w / w.sum())
        yield c, first, counts.astype(np.int64)


@dataclass
class EventBlock:
    """One chunk of users' events, sorted by time: user index, product index, timestamp, rating."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray


def generate_events(shop: Catalog, counts: np.ndarray, first_user: int, rng: np.random.Generator) -> EventBlock:
    """Events of users ``first_user``... (``counts`` each): sessions, re-views, neighbours and preferred categories."""
    n_users, m = len(counts), int(counts.sum())
    start = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(n_users), counts)
    first = np.zeros(m, bool)
    first[start] = True

    # Per user: a preferred category (that of a popular product: popular categories get more fans) and a start time.
    preferred = shop.category[shop.by_rank[zipf_ranks(rng.random(n_users), len(shop))]]
    span = LOG_DAYS * 86400
    begin = rng.random(n_users) * span
    sessions = 1.0 + NEW_SESSION * (counts - 1)
    break_mean = np.clip((span - begin) / (sessions + 1.0), BREAK_MEAN_MIN, BREAK_MEAN_MAX)

    u = rng.random((4, m))
    new_session = first | (u[0] < NEW_SESSION)
    # 0 fresh pick, 1 neighbour of the previous item, 2 re-view of an earlier one.
    kind = np.where(new_session, np.where(u[1] < REPEAT_AT_SESSION_START, 2, 0),
                    np.where(u[1] < REPEAT_IN_SESSION, 2, np.where(u[1] < REPEAT_IN_SESSION + NEIGHBOUR_IN_SESSION, 1, 0)))
    kind[first] = 0
    kind = kind.astype(np.int8)

    items = np.full(m, -1, np.int32)
    fresh = np.flatnonzero(kind == 0)
    from_preferred = u[2, fresh] < PREFERRED_CATEGORY
    picks = np.empty(len(fresh), np.int32)
    glob = ~from_preferred
    picks[glob] = shop.by_rank[zipf_ranks(u[3, fresh[glob]], len(shop))]
    cat = preferred[owner[fresh[from_preferred]]]
    low, high = shop.category_start[cat], shop.category_start[cat + 1]
    picks[from_preferred] = shop.members[low + zipf_ranks(u[3, fresh[from_preferred]], high - low)]
    items[fresh] = picks

    # Each dependent event copies (or takes a neighbour of) an earlier event of the same user; resolve
    # them in rounds, each settling the events whose source is settled (a few dozen rounds at most).
    position = np.arange(m, dtype=np.int64)
    source = position - 1
    back = (-np.log1p(-u[3]) * REPEAT_RECENCY).astype(np.int64)
    repeat = kind == 2
    source[repeat] = np.maximum(start[owner[repeat]], position[repeat] - 1 - back[repeat])
    slot = (u[3] * NEIGHBOURS).astype(np.int64).clip(0, NEIGHBOURS - 1)
    pending = np.flatnonzero(kind != 0)
    while len(pending):
        ready = items[source[pending]] >= 0
        done, pending = pending[ready], pending[~ready]
        prev = items[source[done]]
        items[done] = np.where(kind[done] == 1, shop.neighbours[prev, slot[done]], prev)

    gap = np.where(new_session,
                   BREAK_MIN + rng.exponential(1.0, m) * break_mean[owner],
                   1.0 + rng.lognormal(math.log(SESSION_GAP_MEDIAN), SESSION_GAP_SIGMA, m))
    gap[first] = 0.0
    total = np.cumsum(gap.astype(np.int64))
    timestamps = LOG_START + begin.astype(np.int64)[owner] + total - total[start][owner]
    ratings = np.clip(np.rint(shop.quality[items] + rng.normal(0.0, 0.9, m)), 1, 5).astype(np.int8)

    order = np.argsort(timestamps, kind="stable")  # the block reads like a log: by time, users interleaved
    return EventBlock(owner[order] + first_user, items[order], timestamps[order], ratings[order])


def user_ids(index: np.ndarray, n_users: int) -> Any:
    """User ids ``U000123``, a fixed shuffle of the user index (ids say nothing about the generation order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numbers = pc.cast(pa.array(_scramble(index, n_users, 2_654_435_761) + 1), pa.string())
    return pc.binary_join_element_wise("U", pc.utf8_lpad(numbers, _id_width(n_users), padding="0"), "")


def write_interactions(shop: Catalog, size: ShopSize, path: Path, *, progress: bool = True) -> int:
    """Write the interaction log (user_id, item_id, timestamp, rating) to ``path``; returns the number of events."""
    import pyarrow as pa

    ids = product_ids(0, len(shop), len(shop))
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.int8())])
    rows = 0
    with _TableWriter(path, size.format, schema) as writer, \
            Progress("interactions", size.events, logger=log, unit="event", show=progress) as bar:
        for c, first_user, counts in user_chunks(size):
            block = generate_events(shop, counts, first_user, _rng(size.seed, _EVENTS, c))
            writer.write(pa.table([user_ids(block.users, size.users), ids.take(pa.array(block.items)),
                                   pa.array(block.timestamps), pa.array(block.ratings)], schema=schema))
            rows += len(block.items)
            bar.update(len(block.items))
    return rows


# ----------------------------------------------------------------------------- search judgments


def _query_keys(shop: Catalog, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A query per anchor product: its kind plus some of its brand, colour and material, encoded as one integer."""
    n = len(anchors)
    brand = np.where(rng.random(n) < QUERY_BRAND, shop.brand[anchors] + 1, 0).astype(np.int64)
    colour = np.where(rng.random(n) < QUERY_COLOUR, shop.colour[anchors] + 1, 0).astype(np.int64)
    material = np.where(rng.random(n) < QUERY_MATERIAL, shop.material[anchors] + 1, 0).astype(np.int64)
    key = shop.category[anchors].astype(np.int64)
    for value, levels in ((brand, len(BRANDS)), (colour, len(COLOURS)), (material, len(MATERIALS))):
        key = key * (levels + 1) + value
    return key


def _decode(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(category, brand + 1, colour + 1, material + 1) of query keys; 0 means the query leaves it out."""
    key = key.copy()
    parts = []
    for levels in (len(MATERIALS), len(COLOURS), len(BRANDS)):
        parts.append(key % (levels + 1))
        key //= levels + 1
    material, colour, brand = parts
    return key, brand, colour, material


def query_texts(shop: Catalog, keys: np.ndarray) -> list[str]:
    """The text of each query key: ``[brand] [colour] [material] kind``, lower case."""
    category, brand, colour, material = _decode(keys)
    kinds = shop.kind_names()
    texts = []
    for c, b, col, mat in zip(category.tolist(), brand.tolist(), colour.tolist(), material.tolist()):
        words = ([BRANDS[b - 1]] if b else []) + ([COLOURS[col - 1]] if col else []) + ([MATERIALS[mat - 1]] if mat else [])
        texts.append(" ".join(words + [kinds[c]]).lower())
    return texts


def judgment_rows(shop: Catalog, size: ShopSize) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size.judgments`` distinct (query key, product, relevance) rows: 3 = matches every word, 2 = right kind, 1 = other."""
    rng = _rng(size.seed, _JUDGMENTS)
    n, want = len(shop), size.judgments
    keys = np.zeros(0, np.int64)
    products = np.zeros(0, np.int32)
    for _ in range(50):
        need = want - len(keys)
        if need <= 0:
            break
        n_queries = int(need / (1.0 + JUDGED_PER_QUERY) * 1.2) + 10
        anchors = shop.by_rank[zipf_ranks(rng.random(n_queries), n)]
        qkey = _query_keys(shop, anchors, rng)
        per_query = 1 + rng.poisson(JUDGED_PER_QUERY, n_queries)
        owner = np.repeat(np.arange(n_queries), per_query)
        head = np.zeros(len(owner), bool)
        head[np.cumsum(per_query) - per_query] = True
        cat = shop.category[anchors][owner]
        low, high = shop.category_start[cat], shop.category_start[cat + 1]
        same = shop.members[low + zipf_ranks(rng.random(len(owner)), high - low)]
        other = shop.by_rank[(rng.random(len(owner)) * n).astype(np.int64)]
        picked = np.where(rng.random(len(owner)) < JUDGED_SAME_CATEGORY, same, other)
        picked[head] = anchors  # every query has its anchor, a full match
        keys = np.concatenate([keys, qkey[owner]])
        products = np.concatenate([products, picked.astype(np.int32)])
        _, index = np.unique(keys * n + products, return_index=True)
        keep = np.sort(index)[:want]  # first occurrences, in generation order
        keys, products = keys[keep], products[keep]
    if len(keys) < want:
        raise SynthesizeError("--judgments %d is more distinct (query, product) pairs than %d products give; "
                              "ask for fewer judgments or more products" % (want, n))
    category, brand, colour, material = _decode(keys)
    right_kind = shop.category[products] == category
    full = (right_kind & ((brand == 0) | (shop.brand[products] + 1 == brand))
            & ((colour == 0) | (shop.colour[products] + 1 == colour))
            & ((material == 0) | (shop.material[products] + 1 == material)))
    relevance = np.where(full, 3, np.where(right_kind, 2, 1)).astype(np.int8)
    return keys, products, relevance


def write_judgments(shop: Catalog, size: ShopSize, train: Path, valid: Path) -> tuple[int, int]:
    """Write the judgments, split by a stable hash of the query text (about 10% valid); returns (train rows, valid rows)."""
    import pyarrow as pa

    keys, products, relevance = judgment_rows(shop, size)
    distinct, inverse = np.unique(keys, return_inverse=True)
    texts = query_texts(shop, distinct)
    is_valid = np.array([zlib.crc32(t.encode("utf-8")) % VALID_BUCKETS == 0 for t in texts], bool)[inverse]
    text_array = pa.array(texts, pa.string())
    ids = product_ids(0, len(shop), len(shop))
    schema = pa.schema([("query", pa.string()), ("product_id", pa.string()), ("relevance", pa.int8())])
    counts = []
    for path, rows in ((train, np.flatnonzero(~is_valid)), (valid, np.flatnonzero(is_valid))):
        with _TableWriter(path, size.format, schema) as writer:
            for first in range(0, max(len(rows), 1), CHUNK_JUDGMENTS):
                part = rows[first:first + CHUNK_JUDGMENTS]
                writer.write(pa.table([text_array.take(pa.array(inverse[part])), ids.take(pa.array(products[part])),
                                       pa.array(relevance[part])], schema=schema))
        counts.append(len(rows))
    for path, count in zip((train, valid), counts):
        if not count:
            log.warning("%s got no judgments: the split by query hash needs more queries (ask for more --judgments)",
                        path.name.removesuffix(".partial").lstrip("."))
    return counts[0], counts[1]


# ----------------------------------------------------------------------------- configs


def _cutoffs(n_products: int, wanted: tuple[int, ...]) -> list[int]:
    return [k for k in wanted if k <= n_products] or [n_products]


def _header(kind: str, size: ShopSize, check: str) -> str:
    return (
        "# A synthetic shop written by `tfrec data synthesize` (%s products, %s users, %s events, seed %d).\n"
        "# It is for scale and speed tests: metrics measured on it say nothing about model quality.\n"
        "# %s\n"
        "#   tfrec data validate --config %s\n"
        % ("{:,}".format(size.products), "{:,}".format(size.users), "{:,}".format(size.events), size.seed, kind, check)
    )


def recommend_config(folder: Path, names: dict[str, str], size: ShopSize) -> str:
    """The ``interactions-csv`` config that reads the shop's catalog and interaction log."""
    return _header("Recommendation from the interaction log. Check it with", size, folder / CONFIG_FILE) + (
        "run:\n"
        "  name: synthetic-shop\n"
        "data:\n"
        "  dataset: interactions-csv\n"
        "  dir: %s   # absolute: data.dir is read relative to the folder tfrec runs in\n"
        "  catalog:\n"
        "    path: %s\n"
        "    id_column: product_id\n"
        "    text_columns: [title]\n"
        "  interactions:\n"
        "    path: %s\n"
        "    user_column: user_id\n"
        "    item_column: item_id\n"
        "    timestamp_column: timestamp\n"
        "    rating_column: rating\n"
        "evaluation:\n"
        "  ks: %s\n"
    ) % (json.dumps(str(folder)), names["products"], names["interactions"], json.dumps(_cutoffs(size.products, (10, 50))))


def search_config(folder: Path, names: dict[str, str], size: ShopSize) -> str:
    """The ``search-csv`` config that reads the shop's catalog and judgments."""
    n = size.products
    return _header("Product search from the judgments. Check it with", size, folder / SEARCH_CONFIG_FILE) + (
        "run:\n"
        "  name: synthetic-search\n"
        "data:\n"
        "  dataset: search-csv\n"
        "  dir: %s   # absolute: data.dir is read relative to the folder tfrec runs in\n"
        "  catalog:\n"
        "    path: %s\n"
        "    id_column: product_id\n"
        "    text_columns: [title]\n"
        "    numeric_columns: [price]\n"
        "    categorical_columns: [category]\n"
        "  judgments:\n"
        "    train: %s\n"
        "    valid: %s\n"
        "    query_column: query\n"
        "    product_column: product_id\n"
        "    label_column: relevance\n"
        "    label_min: 1.0\n"
        "    label_max: 3.0\n"
        "retrieval:\n"
        "  min_relevance: 2.0\n"
        "  top_k: %d\n"
        "  hard_negative_depth: %d\n"
        "ranking:\n"
        "  list_size: %d\n"
        "evaluation:\n"
        "  ks: %s\n"
        "  positive_relevance: 2.5\n"
    ) % (json.dumps(str(folder)), names["products"], names["train"], names["valid"], min(100, n), min(50, n),
         max(2, min(16, n)), json.dumps(_cutoffs(n, (10, 100))))


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n_bytes, unit)
        n_bytes /= 1000.0  # type: ignore[assignment]
    return "%d B" % n_bytes


__all__ = ["ShopSize", "SynthesizeError", "WrittenFile", "parse_count", "synthesize"]
