"""`tfrec init` starter configs for a user's own files, and built-in configs found by name from any folder."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import yaml

from tfrec.cli.main import main
from tfrec.config import ConfigError, load_config
from tfrec.config.builtin import builtin_config_path, builtin_configs, find_config
from tfrec.config.loader import resolve_config
from tfrec.config.starter import STARTERS, render_starter, write_starter

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cordless", "drill", "hammer", "copper", "pipe", "garden", "hose", "led", "bulb", "oak", "shelf", "paint",
         "white", "brush", "wire", "steel", "door", "handle", "kitchen", "faucet", "shower", "head", "wall", "tile"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def starter_columns(config: Path) -> dict:
    """The starter's data section, read back as the user would see it."""
    return yaml.safe_load(config.read_text(encoding="utf-8"))["data"]


def write_search_files(folder: Path, data: dict, n_products: int = 120, seed: int = 0) -> None:
    """A generated catalog and graded judgments, under the file and column names the starter names."""
    rng = random.Random(seed)
    catalog, judgments = data["catalog"], data["judgments"]
    ids = ["P%04d" % i for i in range(n_products)]
    titles = [" ".join(rng.sample(WORDS, 3)) for _ in ids]
    write_csv(folder / catalog["path"], [catalog["id_column"], *catalog["text_columns"]],
              [[pid, title, *(["extra"] * (len(catalog["text_columns"]) - 1))] for pid, title in zip(ids, titles)])
    header = [judgments["query_column"], judgments["product_column"], judgments["label_column"]]
    for split, n_queries in (("train", 30), ("valid", 10)):
        rows = []
        for q in range(n_queries):
            query = "%s %s %d" % (rng.choice(WORDS), split, q)
            for pid in rng.sample(ids, 4):
                rows.append([query, pid, rng.choice([judgments["label_min"], 2.0, judgments["label_max"]])])
        write_csv(folder / judgments[split], header, rows)


def write_recommend_files(folder: Path, data: dict, n_items: int = 120, n_users: int = 25, seed: int = 0) -> None:
    """A generated item catalog and interaction log (ISO dates), under the starter's names."""
    rng = random.Random(seed)
    catalog, log = data["catalog"], data["interactions"]
    ids = ["I%04d" % i for i in range(n_items)]
    write_csv(folder / catalog["path"], [catalog["id_column"], *catalog["text_columns"]],
              [[iid, " ".join(rng.sample(WORDS, 3))] for iid in ids])
    rows = []
    for u in range(n_users):
        for day, iid in enumerate(rng.sample(ids, 6), start=1):
            rows.append(["U%03d" % u, iid, "2024-05-%02dT10:00:00" % day])
    write_csv(folder / log["path"], [log["user_column"], log["item_column"], log["timestamp_column"]], rows)


def test_init_search_starter_validates_own_files(capsys, tmp_path, monkeypatch):
    """`tfrec init search DIR` writes a commented config; files named as it says pass `tfrec data validate`."""
    monkeypatch.chdir(tmp_path)  # a folder with no configs/ and no data: the user's own project
    code, out, err = run_cli(capsys, "init", "search", "shop")
    config = tmp_path / "shop" / "tfrec.yaml"
    assert code == 0, err
    assert "wrote: shop/tfrec.yaml" in out
    assert "tfrec data validate --config shop/tfrec.yaml" in out and "tfrec train --config shop/tfrec.yaml" in out
    text = config.read_text(encoding="utf-8")
    for key in ("id_column", "text_columns", "query_column", "product_column", "label_column", "label_min", "label_max"):
        line = next(li for li in text.splitlines() if li.strip().startswith(key + ":"))
        assert "#" in line, "%s is not explained: %r" % (key, line)  # every column says what it means
    data = starter_columns(config)
    assert data["dataset"] == "search-csv" and Path(data["dir"]) == (tmp_path / "shop").resolve()
    write_search_files(tmp_path / "shop", data)

    code, out, err = run_cli(capsys, "data", "validate", "--config", "shop/tfrec.yaml")
    assert code == 0, err
    assert "data ok: no rows dropped" in out
    # The starter's own settings load as a whole config, from another folder too (data.dir is absolute).
    monkeypatch.chdir(tmp_path / "shop")
    loaded = load_config("tfrec.yaml")
    assert loaded.config.data.catalog.text_columns == ["title"] and loaded.config.retrieval.hard_negatives


def test_init_recommend_starter_validates_own_files(capsys, tmp_path):
    """`tfrec init recommend DIR` writes an interactions config that validates on files named as it says."""
    folder = tmp_path / "my shop"  # a space in the path: the starter quotes it
    code, out, err = run_cli(capsys, "init", "recommend", str(folder))
    assert code == 0, err
    config = folder / "tfrec.yaml"
    text = config.read_text(encoding="utf-8")
    for key in ("user_column", "item_column", "timestamp_column", "rating_column", "id_column", "text_columns"):
        line = next(li for li in text.splitlines() if li.strip().startswith(key + ":"))
        assert "#" in line, "%s is not explained: %r" % (key, line)
    data = starter_columns(config)
    assert data["dataset"] == "interactions-csv"
    write_recommend_files(folder, data)
    code, out, err = run_cli(capsys, "data", "validate", "--config", str(config))
    assert code == 0, err
    assert "data ok: no rows dropped" in out


def test_init_refuses_to_overwrite_without_force(capsys, tmp_path):
    """An existing tfrec.yaml is kept (exit 1, one line saying --force), and replaced with --force."""
    config = tmp_path / "tfrec.yaml"
    config.write_text("# mine\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "init", "search", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("tfrec init: error: ") and "already exists" in err and "--force" in err
    assert config.read_text(encoding="utf-8") == "# mine\n"
    code, out, err = run_cli(capsys, "init", "recommend", str(tmp_path), "--force")
    assert code == 0, err
    assert starter_columns(config)["dataset"] == "interactions-csv"


def test_init_rejects_unknown_kind(capsys, tmp_path):
    """argparse names the kinds there are."""
    with pytest.raises(SystemExit) as exit_info:
        main(["init", "ranking", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "search" in capsys.readouterr().err
    with pytest.raises(ValueError, match="search, recommend"):
        render_starter("ranking", tmp_path, tmp_path / "tfrec.yaml")


def test_every_starter_renders_to_a_loadable_config(tmp_path):
    """Each starter is valid YAML that the schema accepts (data aside: the files come later)."""
    for kind in STARTERS:
        path = write_starter(kind, tmp_path / kind)
        loaded = load_config(path, resolve_data_dir=False)
        assert loaded.config.run.name == "%s-%s" % (kind, kind)
        assert loaded.config.data.dir == str((tmp_path / kind).resolve())


def test_builtin_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    """`--config quick` / `default` / `quick.yaml` / `configs/quick.yaml` find the packaged files anywhere."""
    monkeypatch.chdir(tmp_path)
    names = builtin_configs()
    assert {"default", "quick", "tune", "movielens", "amazon_scientific"} <= set(names)
    packaged = ROOT / "tfrec" / "configs"
    for given in ("quick", "quick.yaml", "configs/quick.yaml"):
        assert resolve_config(given) == packaged / "quick.yaml"
    loaded = load_config("quick", resolve_data_dir=False)
    assert loaded.config.run.name == "homedepot-quick"
    assert loaded.config.retrieval.hard_negatives  # from default.yaml, which quick.yaml extends
    for name in names:  # every built-in loads by name, its `extends:` chain included
        assert load_config(name, resolve_data_dir=False).config is not None
    assert builtin_config_path("../setup") is None and builtin_config_path("") is None


def test_an_existing_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
    """A file of the user's own called quick.yaml is read, not the packaged one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick.yaml").write_text("run:\n  name: mine\n", encoding="utf-8")
    assert find_config("quick.yaml") == Path("quick.yaml")
    assert load_config("quick.yaml", resolve_data_dir=False).config.run.name == "mine"
    assert load_config("quick", resolve_data_dir=False).config.run.name == "homedepot-quick"


def test_unknown_config_name_lists_the_builtins(capsys, tmp_path, monkeypatch):
    """A name that is neither a file nor a built-in: one error naming the path and the built-in names."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="quik: config file not found") as info:
        load_config("quik")
    assert str(tmp_path / "quik") in str(info.value)
    assert "built-in configs: " in str(info.value) and "quick" in str(info.value) and "default" in str(info.value)
    code, out, err = run_cli(capsys, "train", "--config", "quik")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "built-in configs: accelerator, amazon_scientific, default" in err


def test_config_help_names_the_builtins(capsys):
    """`tfrec train --help` says --config takes a built-in name and lists them."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "built-in config by name" in out and "quick" in out and "(default: default)" in out


def test_extends_names_a_built_in_config(tmp_path):
    from tfrec.config.loader import load_config

    (tmp_path / "shop.yaml").write_text("extends: quick\nrun:\n  name: shop\n")
    loaded = load_config(tmp_path / "shop.yaml", resolve_data_dir=False)
    assert loaded.config.run.name == "shop"
    assert loaded.config.data.max_products == 3000  # from the built-in quick config
    assert loaded.config.retrieval.hard_negatives is True  # from default, which quick extends
