"""Configuration: layered loading, typed validation with errors naming key and source, saving."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tfrec.config import Config, ConfigError, config_to_dict, dump_config, load_config, save_config
from tfrec.config.schema import REMOVED_KEYS, REMOVED_VALUES
from tfrec.data import load_data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(in_repo, shared_datasets):
    """With no file the schema defaults apply and the data dir resolves to ../shared/datasets."""
    loaded = load_config(None)
    assert loaded.config.retrieval.batch_size == 64
    assert loaded.config.data.dataset == "homedepot"
    assert Path(loaded.config.data.dir) == (shared_datasets / "homedepot").resolve()


def test_layers_defaults_file_extends_overrides(in_repo, tmp_path):
    """A file overrides defaults, a file it extends sits below it, --set overrides both."""
    write(tmp_path / "base.yaml", "retrieval:\n  batch_size: 32\n  epochs: 3\nranking:\n  list_size: 8\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nretrieval:\n  epochs: 5\n")
    loaded = load_config(child, ["ranking.list_size=12", "evaluation.ks=[5, 10]"])
    cfg = loaded.config
    assert (cfg.retrieval.batch_size, cfg.retrieval.epochs, cfg.ranking.list_size) == (32, 5, 12)
    assert cfg.evaluation.ks == [5, 10]
    assert cfg.retrieval.learning_rate == pytest.approx(3e-5)  # untouched default
    assert loaded.sources["retrieval.batch_size"] == str(tmp_path / "base.yaml")
    assert loaded.sources["retrieval.epochs"] == str(child)
    assert loaded.sources["ranking.list_size"] == "--set ranking.list_size=12"


def test_int_accepted_for_float_and_list_replaced(in_repo, tmp_path):
    """YAML ints are valid floats; a list in a later layer replaces the earlier list."""
    path = write(tmp_path / "c.yaml", "ranking:\n  learning_rate: 1\nevaluation:\n  ks: [1, 2]\n")
    cfg = load_config(path, ["evaluation.ks=[3]"]).config
    assert cfg.ranking.learning_rate == 1.0 and isinstance(cfg.ranking.learning_rate, float)
    assert cfg.evaluation.ks == [3]


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("retrieval:\n  bach_size: 3\n", "retrieval.bach_size", "did you mean 'batch_size'"),
        ("retreival:\n  batch_size: 3\n", "retreival", "unknown key"),
        ("retrieval:\n  batch_size: -4\n", "retrieval.batch_size", "must be >= 2, got -4"),
        ("retrieval:\n  batch_size: 3.5\n", "retrieval.batch_size", "expected int, got 3.5"),
        ("retrieval:\n  batch_size: true\n", "retrieval.batch_size", "expected int, got True"),
        ("ranking:\n  learning_rate: 0\n", "ranking.learning_rate", "must be > 0.0"),
        ("ranking:\n  learning_rate: fast\n", "ranking.learning_rate", "expected float"),
        ("data:\n  strict: 1\n", "data.strict", "expected bool"),
        ("data:\n  dataset: imagenet\n", "data.dataset", "expected one of 'homedepot'"),
        ("evaluation:\n  ks: 10\n", "evaluation.ks", "expected a list of int"),
        ("evaluation:\n  ks: [10, ten]\n", "evaluation.ks[1]", "expected int, got 'ten'"),
        ("evaluation:\n  ks: [0]\n", "evaluation.ks", "every k must be >= 1"),
        ("ranking:\n  list_size: 1\n", "ranking.list_size", "must be >= 2"),
        ("train: 5\n", "train", "expected a mapping"),
        ("data:\n  judgments:\n    label_min: 3\n    label_max: 1\n", "data.judgments.label_max", "greater than label_min"),
        ("data:\n  dataset: search-csv\n", "data.dir", "is required"),
        # A number in quotes is text to YAML: refused with the expected type, never silently converted.
        ('retrieval:\n  epochs: "2"\n', "retrieval.epochs", ": expected int, got '2' (a quoted string: write the number without quotes)"),
        ("ranking:\n  learning_rate: '1e-3'\n", "ranking.learning_rate", ": expected float, got '1e-3' (a quoted string: write the number"),
        ('evaluation:\n  ks: [10, "100"]\n', "evaluation.ks[1]", ": expected int, got '100' (a quoted string"),
    ],
)
def test_bad_values_name_key_and_file(in_repo, tmp_path, text, key, fragment):
    """Unknown keys, wrong types and impossible values are errors naming the key and the file."""
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path) + ": " + key + ":"), message
    assert fragment in message
    assert err.value.key == key


def test_override_errors_name_the_override(in_repo):
    """A bad --set names the override, not the file."""
    with pytest.raises(ConfigError, match=r"^--set retrieval.batch_size=-1: retrieval.batch_size: must be >= 2"):
        load_config("configs/default.yaml", ["retrieval.batch_size=-1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config("configs/default.yaml", ["retrieval.batch_size"])


def test_broken_files(in_repo, tmp_path):
    """Missing, non-YAML, non-mapping, non-UTF-8 and circular files give clear errors."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+, column \d+"):
        load_config(write(tmp_path / "bad.yaml", "retrieval:\n  batch_size: [1\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    (tmp_path / "latin.yaml").write_bytes(b"run:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin.yaml")
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_missing_data_paths(in_repo, tmp_path):
    """A data folder or data file that does not exist is an error naming the key and the file."""
    path = write(tmp_path / "c.yaml", "data:\n  dir: %s\n" % (tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"c.yaml: data.dir: folder .*nowhere not found"):
        load_config(path)
    (tmp_path / "empty").mkdir()
    path = write(tmp_path / "d.yaml", "data:\n  dir: %s\n" % (tmp_path / "empty"))
    loaded = load_config(path)
    with pytest.raises(ConfigError, match=r"d.yaml: data.catalog.path: data file .*products.csv not found"):
        load_data(loaded)


def test_dataset_not_found_lists_where_it_looked(tmp_path, monkeypatch):
    """When a built-in dataset is nowhere, the error lists $TFREC_DATA_DIR, ./data and ../shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFREC_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(ConfigError) as err:
        load_config(None)
    message = str(err.value)
    assert "data.dir" in message and "env/homedepot" in message and "data/homedepot" in message
    assert "shared/datasets/homedepot" in message


def test_data_dir_search_order(tmp_path, monkeypatch):
    """$TFREC_DATA_DIR wins over ./data, which wins over ../shared/datasets."""
    work = tmp_path / "proj"
    for folder in (tmp_path / "env" / "homedepot", work / "data" / "homedepot", tmp_path / "shared" / "datasets" / "homedepot"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TFREC_DATA_DIR", str(tmp_path / "env"))
    assert load_config(None).config.data.dir == str((tmp_path / "env" / "homedepot").resolve())
    monkeypatch.delenv("TFREC_DATA_DIR")
    assert load_config(None).config.data.dir == str((work / "data" / "homedepot").resolve())
    (work / "data" / "homedepot").rmdir()
    loaded = load_config(None)
    assert loaded.config.data.dir == str((tmp_path / "shared" / "datasets" / "homedepot").resolve())
    assert "../shared/datasets" in loaded.sources["data.dir"]


def test_k_larger_than_catalog(in_repo, homedepot_slice, tmp_path):
    """evaluation.ks or retrieval.top_k above the catalog size fail once the catalog is known."""
    path = write(tmp_path / "c.yaml", "data:\n  dir: %s\nevaluation:\n  ks: [10, 100000]\n" % homedepot_slice)
    loaded = load_config(path)
    with pytest.raises(ConfigError, match=r"c.yaml: evaluation.ks: k=100000 is larger than the catalog \(\d+ items"):
        load_data(loaded)
    loaded = load_config(path, ["evaluation.ks=[5]", "retrieval.top_k=100000"])
    with pytest.raises(ConfigError, match=r"--set retrieval.top_k=100000: retrieval.top_k: 100000 is larger than the catalog"):
        load_data(loaded)


def test_saved_config_round_trips(in_repo, tmp_path):
    """The saved resolved config loads back to an equal config, and names its layers."""
    loaded = load_config("configs/amazon_scientific.yaml", ["recommendation.batch_size=64"])
    saved = save_config(loaded, tmp_path / "config.yaml")
    text = saved.read_text(encoding="utf-8")
    assert text.startswith("# Resolved tfrec")
    assert "configs/amazon_scientific.yaml" in text and "--set recommendation.batch_size=64" in text
    again = load_config(saved)
    assert again.config == loaded.config
    assert isinstance(again.config, Config)
    assert dump_config(again.config) == dump_config(loaded.config)


def test_shipped_configs_load(in_repo, shared_datasets):
    """Every YAML file in configs/ loads and validates against its data."""
    paths = sorted(Path("configs").glob("*.yaml"))
    assert paths
    for path in paths:
        loaded = load_config(path)
        load_data(loaded)


def _flat_keys(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys |= _flat_keys(value, prefix + key + ".") if isinstance(value, dict) else {prefix + key}
    return keys


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_removed_keys_fail_saying_what_to_use_instead(in_repo, tmp_path, key):
    """A removed key, in a file or a --set, is an error naming the key, its source and the replacement."""
    section, name = key.split(".")
    path = write(tmp_path / "old.yaml", "extends: %s\n%s:\n  %s: 1\n" % (Path("configs/default.yaml").resolve(), section, name))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key and str(err.value) == "%s: %s: was removed: %s" % (path, key, REMOVED_KEYS[key])
    with pytest.raises(ConfigError, match=r"^--set %s=1: %s: was removed: (use|delete)" % (key, key)):
        load_config("configs/default.yaml", ["%s=1" % key])
    assert key not in _flat_keys(config_to_dict(Config()))  # really gone from the schema


def test_removed_values_fail_saying_what_to_use_instead(in_repo):
    """tune.target: retrieval (which always raised) is refused when the config loads, with the reason."""
    for (key, value), advice in REMOVED_VALUES.items():
        with pytest.raises(ConfigError) as err:
            load_config("configs/tune.yaml", ["%s=%s" % (key, value)])
        assert err.value.key == key and "%r was removed: %s" % (value, advice) in str(err.value)
    assert "25 min" in REMOVED_VALUES[("tune.target", "retrieval")]


def test_a_saved_config_of_an_earlier_release_still_loads(in_repo, tmp_path):
    """A run's config.yaml written before the keys were removed loads (they never changed what the run did)."""
    loaded = load_config("configs/default.yaml", ["retrieval.batch_size=32"])
    saved = save_config(loaded, tmp_path / "config.yaml")
    old = {"text.training": "frozen", "text.trainable_layers": 2, "text.projection_dim": 0, "train.batch_size": 64,
           "train.epochs": 1, "train.learning_rate": 0.001, "train.shuffle_buffer": 10000}
    assert set(old) == set(REMOVED_KEYS)
    values = yaml.safe_load(saved.read_text(encoding="utf-8"))
    for key, value in old.items():
        section, name = key.split(".")
        values[section][name] = value
    header = saved.read_text(encoding="utf-8").split("\n", 2)[:2]
    saved.write_text("\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    assert load_config(saved).config == loaded.config
    # The same keys in a file someone wrote are still refused.
    mine = write(tmp_path / "mine.yaml", yaml.safe_dump(values, sort_keys=False))
    with pytest.raises(ConfigError, match="was removed"):
        load_config(mine)


def test_every_problem_is_reported_at_once_with_its_source(in_repo, tmp_path):
    """Problems in the file, in a file it extends and in --set overrides come in one error, each with key and source."""
    base = write(tmp_path / "base.yaml", "ranking:\n  list_size: 1\nevaluation:\n  ks: [0]\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nretrieval:\n  bach_size: 3\n  epochs: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(child, ["retrieval.top_k=0", "train.epochs=2", "nonsense"])
    found = {(p.key, p.source) for p in err.value.problems}
    via = "%s (%s extends %s)" % (base, child, base)
    assert found == {
        ("", "--set nonsense"),
        ("train.epochs", "--set train.epochs=2"),
        ("retrieval.bach_size", str(child)),
        ("retrieval.epochs", str(child)),
        ("retrieval.top_k", "--set retrieval.top_k=0"),
        ("ranking.list_size", via),
        ("evaluation.ks", via),
    }
    message = str(err.value)
    assert message.startswith("7 problems in the config:\n") and len(message.splitlines()) == 8
    assert "  %s: ranking.list_size: must be >= 2, got 1" % via in message.splitlines()
    assert err.value.key == err.value.problems[0].key  # the first problem stays the error's own key and source


def test_extends_failures_name_the_chain(in_repo, tmp_path):
    """A file an `extends:` names that is missing or broken is reported with the chain that reached it."""
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    b = write(tmp_path / "b.yaml", "extends: missing.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(a)
    assert str(err.value) == "%s: extends: %s: config file not found (%s extends %s extends %s)" % (
        b, tmp_path / "missing.yaml", a, b, tmp_path / "missing.yaml")
    write(tmp_path / "missing.yaml", "retrieval: [1\n")
    with pytest.raises(ConfigError, match=r"missing.yaml: invalid YAML at line \d+, column \d+: .* \(.*a.yaml extends .*b.yaml "
                                          r"extends .*missing.yaml\)$"):
        load_config(a)
    with pytest.raises(ConfigError, match="config file not found") as err:  # the file given itself: no chain to name
        load_config(tmp_path / "nothing.yaml")
    assert " extends " not in str(err.value)


def test_quoted_text_where_text_is_expected_stays_fine(in_repo, tmp_path):
    """Only quoted numbers are refused (see test_bad_values_name_key_and_file): a quoted run name is text."""
    assert load_config(write(tmp_path / "name.yaml", 'run:\n  name: "2"\n')).config.run.name == "2"


def test_data_checks_list_every_value_the_data_makes_impossible(in_repo, homedepot_slice, tmp_path):
    """Cut-offs and list sizes above the catalog size and relevance thresholds above every label fail together."""
    from tfrec.data.preflight import data_problems

    path = write(tmp_path / "c.yaml", "data:\n  dir: %s\nevaluation:\n  ks: [10, 100000]\n" % homedepot_slice)
    loaded = load_config(path, ["retrieval.top_k=100000", "ranking.list_size=90000", "evaluation.positive_relevance=9",
                                "retrieval.min_relevance=7"])
    with pytest.raises(ConfigError) as err:
        load_data(loaded)
    problems = {p.key: p for p in err.value.problems}
    assert list(problems) == ["evaluation.ks", "retrieval.top_k", "ranking.list_size", "retrieval.min_relevance",
                              "evaluation.positive_relevance"]
    assert problems["evaluation.ks"].source == str(path)
    assert problems["ranking.list_size"].source == "--set ranking.list_size=90000"
    assert "9 is above every relevance label in" in problems["evaluation.positive_relevance"].message
    fine = load_config(path, ["evaluation.ks=[10]"])
    assert data_problems(fine, load_data(fine)) == []


def test_relevance_labels_below_1_are_refused_before_training(in_repo, homedepot_slice, tmp_path):
    """NDCG's gain 2**(label - 1) - 1 is negative below 1: a 0-based scale is refused, naming the key and the fix."""
    path = write(tmp_path / "c.yaml", "data:\n  dir: %s\n  judgments:\n    label_min: 0\nevaluation:\n  ks: [10]\n" % homedepot_slice)
    with pytest.raises(ConfigError) as err:
        load_data(load_config(path))
    problems = {p.key: p for p in err.value.problems}
    assert list(problems) == ["data.judgments.label_min"]
    assert "labels start at 1" in problems["data.judgments.label_min"].message and "0-4 scale to 1-5" in problems["data.judgments.label_min"].message
