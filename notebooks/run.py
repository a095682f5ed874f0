"""Execute tfrec's notebooks top to bottom with nbclient, full size or tiny.

    python notebooks/run.py                      # all four, full size, executed copies in runs/notebooks/
    python notebooks/run.py --tiny --out /tmp/nb 01_quickstart.ipynb

Each notebook's first code cell is tagged ``parameters`` (papermill's convention) and holds its
size knobs. This script inserts a cell after it (tagged ``injected-parameters``) that sets
``OUTPUT_DIR`` to the output folder and, with ``--tiny``, the tiny configuration of
:data:`TINY` plus ``TFREC_NOTEBOOK=tiny`` in the kernel's environment: seconds instead of
minutes, so the test suite can run every notebook. Executed copies go to the output folder, never
into notebooks/; a failing cell exits 1 naming the notebook, the cell and the error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ("01_quickstart.ipynb", "02_colab_tpu_training.ipynb", "03_serving.ipynb", "04_recommendations.ipynb")
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
DEFAULT_OUT = ROOT / "runs" / "notebooks"
CELL_TIMEOUT_S = 3600  # one cell; full-size training cells run for many minutes

# Search slice of the test suite (tests/test_search_pipeline.py): 40 train / 20 valid queries, 300 products.
_TINY_SEARCH = {"MAX_TRAIN_QUERIES": 40, "MAX_VALID_QUERIES": 20, "MAX_PRODUCTS": 300}
_TINY_SEARCH_SETTINGS = ["retrieval.top_k=20", "retrieval.batch_size=16", "ranking.negatives=4", "ranking.candidate_losses=[]",
                         "evaluation.ks=[10,20]", "evaluation.bootstrap_resamples=100"]

# The tiny configuration of each notebook: every knob of its parameters cell that sets a size.
TINY: dict[str, dict[str, Any]] = {
    "01_quickstart.ipynb": {
        **_TINY_SEARCH, "EPOCHS": 0, "RANKER_EPOCHS": 2, "OVERRIDES": _TINY_SEARCH_SETTINGS,
    },
    "02_colab_tpu_training.ipynb": {
        # Fine-tuning stays on (retrieval.text_training=full) for two steps of 16 pairs.
        **_TINY_SEARCH, "EPOCHS": 1, "BATCH_SIZE": 16, "TEXT_MAX_LENGTH": 32, "CROSS_ENCODER": False, "EXPORT": False,
        "CHECKPOINT_EVERY": 1, "OVERRIDES": _TINY_SEARCH_SETTINGS + ["retrieval.max_pairs=32", "ranking.epochs=1"],
    },
    "03_serving.ipynb": {
        "USE_DOCKER": False, "N_REQUESTS": 5, "QUICK_OVERRIDES": [
            "data.max_train_queries=40", "data.max_valid_queries=20", "data.max_products=300", "retrieval.epochs=0",
            "ranking.epochs=1", *_TINY_SEARCH_SETTINGS],
    },
    "04_recommendations.ipynb": {
        "MAX_USERS": 300, "EPOCHS": 2, "OVERRIDES": [
            "recommendation.patience=1", "recommendation.encoder_dim=32", "recommendation.transformer_layers=1",
            "recommendation.max_history=20", "recommendation.top_k=20", "evaluation.bootstrap_resamples=100"],
    },
}


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""

    def __init__(self, notebook: str, cell: Optional[int], source: str, error: str, executed: Optional[Path]) -> None:
        where = "cell %d" % cell if cell is not None else "an unknown cell"
        first = source.strip().splitlines()[0] if source.strip() else ""
        super().__init__("%s: %s failed (%s): %s%s" % (notebook, where, first[:80], error,
                                                      "; executed copy: %s" % executed if executed else ""))
        self.notebook, self.cell, self.error, self.executed = notebook, cell, error, executed


def parameters_index(nb: Any) -> int:
    """Index of the cell tagged ``parameters`` (ValueError naming the notebook if there is none)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return index
    raise ValueError("%s has no code cell tagged %r" % (nb.metadata.get("tfrec_name", "the notebook"), PARAMETERS_TAG))


def parameter_source(values: Mapping[str, Any], tiny: bool) -> str:
    """The code of the injected cell: one assignment per value (Python literals), plus the tiny flag."""
    lines = ["# Injected by notebooks/run.py%s: overrides the parameters cell above." % (" --tiny" if tiny else "")]
    if tiny:
        lines += ["import os", 'os.environ["TFREC_NOTEBOOK"] = "tiny"  # cells that need to know (e.g. skip slow extras)']
    lines += ["%s = %r" % (name, value) for name, value in values.items()]
    return "\n".join(lines) + "\n"


def prepared(path: Path, out_dir: Path, tiny: bool, extra: Optional[Mapping[str, Any]] = None) -> Any:
    """The notebook read from ``path`` with its injected parameters cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["tfrec_name"] = path.name
    values: dict[str, Any] = {"OUTPUT_DIR": str(out_dir)}
    if tiny:  # one embedding cache for the suite, under the output folder like everything else it writes
        values["CACHE_DIR"] = str(out_dir / "embedding-cache")
        values.update(TINY.get(path.name, {}))
    values.update(extra or {})
    cell = nbformat.v4.new_code_cell(parameter_source(values, tiny), metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(parameters_index(nb) + 1, cell)
    return nb


def _kernel_manager() -> Any:
    """A kernel manager that starts ipykernel in this very Python (not whatever 'python3' kernelspec is installed)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python 3 (tfrec)", language="python", resource_dir=str(HERE))

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def _failed_cell(nb: Any) -> tuple[Optional[int], str, str]:
    """(index, source, "ename: evalue") of the first cell with an error output."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                return index, cell.source, "%s: %s" % (output.get("ename", "Error"), output.get("evalue", ""))
    return None, "", ""


def execute(path: Path, out_dir: Path, tiny: bool = False, extra: Optional[Mapping[str, Any]] = None,
            timeout: int = CELL_TIMEOUT_S) -> Path:
    """Run one notebook (cwd: notebooks/, as Jupyter would) and write the executed copy under ``out_dir``; returns it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    if out_dir == HERE or HERE in out_dir.parents:
        raise ValueError("write executed notebooks outside notebooks/ (got --out %s): the committed ones stay clean" % out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = prepared(path, out_dir, tiny, extra)
    target = out_dir / path.name
    client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        nbformat.write(nb, str(target))
        index, source, error = _failed_cell(nb)
        if index is None:  # a timeout leaves no error output
            index, source, error = _running_cell(nb), "", "%s: %s" % (type(err).__name__, str(err).strip().splitlines()[0])
            source = nb.cells[index].source if index is not None else ""
        raise NotebookFailed(path.name, index, source, error, target) from None
    nbformat.write(nb, str(target))
    return target


def _running_cell(nb: Any) -> Optional[int]:
    """The last code cell that started (has an execution count): where a timeout stopped."""
    started = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count") is not None]
    return started[-1] if started else None


def outputs_text(nb: Any) -> str:
    """Every stream and text/plain output of an executed notebook, joined (for tests and logs)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: run the named notebooks (default: all four) in order; exit 1 at the first failing cell."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files or names in notebooks/ (default: all four, in order)")
    parser.add_argument("--tiny", action="store_true", help="the tiny configuration (what the test suite runs)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for executed copies and what they write "
                        "(default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="override one parameter, value as JSON (e.g. --set 'N_REQUESTS=50'); repeatable")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            parser.error("--set needs NAME=JSON, got %r" % item)
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value  # a bare string
    paths = [Path(n) if Path(n).is_file() else HERE / n for n in (args.notebooks or NOTEBOOKS)]
    for path in paths:
        if not path.is_file():
            parser.error("no notebook %s (notebooks: %s)" % (path, ", ".join(NOTEBOOKS)))
    for path in paths:
        started = time.perf_counter()
        print("running %s%s ..." % (path.name, " (tiny)" if args.tiny else ""), flush=True)
        try:
            target = execute(path, Path(args.out), tiny=args.tiny, extra=extra, timeout=args.timeout)
        except NotebookFailed as err:
            print("notebook failed: %s" % err, file=sys.stderr, flush=True)
            return 1
        print("ok %s in %.1f s -> %s" % (path.name, time.perf_counter() - started, target), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
