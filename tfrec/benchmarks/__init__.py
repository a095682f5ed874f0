"""Benchmarks: each writes a JSON file and a Markdown table a person can read."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tfrec.benchmarks import data_layer


def _text_encoding(out_dir: Path, data_config: str) -> list[Path]:
    from tfrec.benchmarks import text_encoding  # imports TensorFlow and the BERT stack: only when asked

    return text_encoding.run(out_dir, data_config)


def _serving(out_dir: Path, data_config: str, export_dir: Path) -> list[Path]:
    from tfrec.benchmarks import serving  # starts a server process over an export: only when asked

    return serving.run(out_dir, data_config, export_dir=export_dir)


def _realtime(out_dir: Path, data_config: str, export_dir: Path, search_run: Optional[Path] = None) -> list[Path]:
    from tfrec.benchmarks import realtime  # starts servers (models and Redis) and runs catalog updates: only when asked

    return realtime.run(out_dir, data_config, export_dir=export_dir, search_run=search_run)


def _training(out_dir: Path, data_config: str, _export: Path) -> list[Path]:
    from tfrec.benchmarks import training  # child processes train the two towers: only when asked

    return training.run(out_dir, data_config)


def _movielens(out_dir: Path, _config: str, _export: Path) -> list[Path]:
    from tfrec.benchmarks import movielens  # trains the TFRS recipe and tfrec's model: only when asked

    return movielens.run(out_dir, "configs/movielens.yaml")


def _scale(out_dir: Path, _config: str, _export: Path, sizes: Optional[list[int]] = None) -> list[Path]:
    from tfrec.benchmarks import scale  # synthesizes shops of up to 50M events: only when asked

    return scale.run(out_dir, sizes=sizes)


BENCHMARKS = {
    "data_layer": lambda out, config, _export: data_layer.run(out, config),
    "text_encoding": lambda out, config, _export: _text_encoding(out, config),
    "serving": _serving,
    "realtime": _realtime,
    "training": _training,
    "movielens": _movielens,
    "scale": _scale,
}
# Run only when named (`make bench-scale`): hours at its largest size, and gigabytes of disk.
ON_REQUEST = ("scale",)


def run_benchmarks(out_dir: Path, only: Optional[list[str]] = None, data_config: str = "configs/default.yaml",
                   export_dir: Path = Path("export"), scale_sizes: Optional[list[int]] = None,
                   search_run: Optional[Path] = None) -> list[Path]:
    """Run the selected benchmarks (default: all but the growth benchmark) and return the result files written."""
    names = only or [n for n in BENCHMARKS if n not in ON_REQUEST]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError("unknown benchmark(s) %s; known: %s" % (", ".join(unknown), ", ".join(BENCHMARKS)))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        if name == "scale":
            written.extend(_scale(out_dir, data_config, Path(export_dir), scale_sizes))
        elif name == "realtime":
            written.extend(_realtime(out_dir, data_config, Path(export_dir), search_run))
        else:
            written.extend(BENCHMARKS[name](out_dir, data_config, Path(export_dir)))
    return written
