"""The four notebooks run top to bottom in their tiny configuration (notebooks/run.py), and stay clean in git.

They run in order, in one output folder, as `make notebooks` runs them: 03 serves the export that 01 wrote.
Each executes in a fresh kernel of this Python, with cwd notebooks/ as Jupyter would (about 3 minutes in all).
"""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"


def _runner():
    spec = importlib.util.spec_from_file_location("tfrec_notebook_runner", FOLDER / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _runner()


def _assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebooks_are_committed_clean_with_a_parameters_cell(name):
    """No outputs or execution counts in git; the first code cell is tagged `parameters` and holds every tiny knob."""
    nb = nbformat.read(str(FOLDER / name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for index, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, "%s: code cell %d has outputs" % (name, index)
        assert runner.INJECTED_TAG not in cell.metadata.get("tags", []), name
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert runner.parameters_index(nb) == 1 and nb.cells[1] is code[0]
    knobs = _assigned_names(code[0].source)
    assert {"OUTPUT_DIR", "CACHE_DIR"} <= knobs
    assert set(runner.TINY[name]) <= knobs, "tiny values for names the parameters cell does not set"


@pytest.fixture(scope="module")
def out(tmp_path_factory, shared_datasets, files):
    return tmp_path_factory.mktemp("notebooks")


def _execute(out: Path, name: str, **extra) -> nbformat.NotebookNode:
    path = runner.execute(FOLDER / name, out, tiny=True, extra=extra)
    assert path == out / name  # the executed copy lands in the output folder, never in notebooks/
    return nbformat.read(str(path), as_version=4)


@pytest.fixture(scope="module")
def quickstart(out):
    return _execute(out, "01_quickstart.ipynb")


@pytest.fixture(scope="module")
def tpu_training(out):
    return _execute(out, "02_colab_tpu_training.ipynb")


@pytest.fixture(scope="module")
def serving(out, quickstart):
    return _execute(out, "03_serving.ipynb", EXPORT_DIR=str(out / "quickstart" / "export"))


@pytest.fixture(scope="module")
def recommendations(out):
    return _execute(out, "04_recommendations.ipynb")


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_quickstart_trains_evaluates_exports_and_searches(out, quickstart):
    (run,) = (out / "quickstart" / "runs").glob("homedepot-quick-*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 < metrics["systems"]["tfrec_search"]["e2e"]["ndcg@10"] <= 1.0
    for model in ("search_retrieval", "search_ranker"):
        assert (out / "quickstart" / "export" / model / "1" / "saved_model.pb").is_file()
    text = runner.outputs_text(quickstart)
    assert "run_dir: %s" % run in text and "Not on Colab" in text
    assert "cordless drill\n  1. " in text  # the search cell printed ranked hits for the first query
    assert _images(quickstart) >= 1  # the report's charts, displayed


def test_tpu_notebook_falls_back_and_fine_tunes_into_its_run_folder(out, tpu_training):
    text = runner.outputs_text(tpu_training)
    assert "falling back to the CPU" in text and "train.distribute.strategy=default" in text
    run = out / "tpu_training" / "runs" / "accelerator-default"
    assert "run_dir: %s" % run in text and (run / "metrics.json").is_file()
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["retrieval"]["text_training"] == "full" and config["retrieval"]["epochs"] == 1
    assert config["train"]["distribute"]["strategy"] == "default" and config["train"]["checkpoint"]["every_steps"] == 1
    assert (run / "retrieval").is_dir()  # the fine-tuned towers' weights
    assert "EXPORT=False" in text


def test_serving_notebook_answers_over_grpc_and_rest_and_times_them(out, serving):
    text = runner.outputs_text(serving)
    assert "development server" in text and "REST and gRPC give the same top 5: True" in text
    latency = json.loads((out / "serving" / "latency.json").read_text())
    assert latency["server"] == "tfrec-dev-server" and len(latency["cases"]) == 4
    for case, row in latency["cases"].items():
        assert row["requests"] == 5 and 0.0 < row["p50_ms"] <= row["p99_ms"], case
    assert "stopped" in text and _images(serving) == 1


def test_recommendations_notebook_recommends_and_plots(out, recommendations):
    (run,) = (out / "recommendations" / "runs").glob("amazon-scientific-*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"popularity", "zero_shot_text", "tfrec_transformer"} <= set(metrics["systems"])
    saved = json.loads((out / "recommendations" / "recommendations.json").read_text())
    catalog = json.loads((out / "recommendations" / "export" / "recommender" / "1" / "assets.extra" / "catalog.json").read_text())
    assert len(saved["shoppers"]) == 3
    for shopper in saved["shoppers"]:
        assert len(shopper["recommended"]) == saved["k"] == 10 and len(shopper["similar_to_last"]) == 5
        assert set(shopper["recommended"]) <= set(catalog["ids"]) and shopper["history"][-1] not in shopper["similar_to_last"]
    assert (out / "recommendations" / "accuracy.png").is_file() and (out / "recommendations" / "beyond_accuracy.png").is_file()
    assert _images(recommendations) == 2


def test_runner_names_the_failing_cell_and_keeps_notebooks_clean(tmp_path):
    """A failing cell stops the run with the notebook, cell and error named; output never goes into notebooks/."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# broken"),
        nbformat.v4.new_code_cell("OUTPUT_DIR = 'x'\nCACHE_DIR = 'y'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(OUTPUT_DIR)\n1 / 0"),
    ])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(runner.NotebookFailed, match=r"broken.ipynb: cell 3 failed \(print\(OUTPUT_DIR\)\): ZeroDivisionError"):
        runner.execute(path, tmp_path / "out")
    executed = nbformat.read(str(tmp_path / "out" / "broken.ipynb"), as_version=4)
    assert executed.cells[2].metadata["tags"] == [runner.INJECTED_TAG]
    assert runner.outputs_text(executed) == "%s\n" % (tmp_path / "out")  # the injected OUTPUT_DIR won
    with pytest.raises(ValueError, match="outside notebooks/"):
        runner.execute(path, FOLDER / "executed")
    assert runner.main(["--out", str(tmp_path / "cli"), str(path)]) == 1
