"""Config files are read safely: alias bombs and recursive values are refused, errors quote values briefly."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tfrec.cli.main import main
from tfrec.config import ConfigError, load_config
from tfrec.config.quoting import QUOTE_LIMIT, quote_value

LEVELS = 9  # 9 lists of 9: the last one stands for 9**9 (387 million) strings


def bomb() -> str:
    """A flow list whose last element expands, through aliases, to 9**9 strings."""
    lists = ['&l0 [%s]' % ", ".join(['"lol"'] * 9)]
    for level in range(1, LEVELS):
        lists.append("&l%d [%s]" % (level, ", ".join(["*l%d" % (level - 1)] * 9)))
    return "[%s]" % ", ".join(lists)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, overrides: tuple[str, ...] = ()) -> ConfigError:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        load_config(path, list(overrides), resolve_data_dir=False)
    assert time.perf_counter() - started < 5
    return error.value


@pytest.mark.timeout(30)
def test_an_alias_bomb_in_a_typed_key_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path / "bomb.yaml", "retrieval:\n  batch_size: %s\n" % bomb())
    message = str(refused(path))
    assert message.startswith(str(path)) and "alias" in message and "100000 values" in message
    assert len(message) < 400


@pytest.mark.timeout(30)
def test_an_alias_bomb_as_extends_is_refused_in_the_file_and_in_the_file_it_extends(tmp_path):
    child = write(tmp_path / "child.yaml", "extends: %s\n" % bomb())
    assert str(refused(child)).startswith(str(child))

    base = write(tmp_path / "base.yaml", "evaluation:\n  ks: %s\n" % bomb())
    child = write(tmp_path / "child2.yaml", "extends: base.yaml\nretrieval:\n  epochs: 2\n")
    message = str(refused(child))
    assert message.startswith(str(base)) and "alias" in message


@pytest.mark.timeout(30)
def test_an_alias_bomb_in_a_set_override_is_refused(tmp_path):
    error = refused(None, ("retrieval.batch_size=%s" % bomb(),))
    assert error.source.startswith("--set retrieval.batch_size=") and "alias" in str(error)
    assert len(str(error)) < 800


@pytest.mark.timeout(30)
def test_tfrec_train_on_a_bomb_is_a_one_line_error(tmp_path, capsys):
    path = write(tmp_path / "bomb.yaml", "retrieval:\n  batch_size: %s\n" % bomb())
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfrec train: error: %s: " % path) and "alias" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path / "loop.yaml", "evaluation:\n  ks: &ks [10, *ks]\n")
    message = str(refused(path))
    assert "refers to a value that contains it" in message and "line 2" in message


def test_ordinary_anchors_and_aliases_still_work(tmp_path):
    path = write(tmp_path / "ok.yaml", "evaluation:\n  ks: &ks [5, 20]\nranking:\n  hidden_units: *ks\n")
    cfg = load_config(path, resolve_data_dir=False).config
    assert cfg.evaluation.ks == [5, 20] and cfg.ranking.hidden_units == [5, 20]


def test_a_long_value_in_an_error_is_cut(tmp_path):
    long_text = "x" * 100_000
    message = str(refused(write(tmp_path / "long.yaml", "retrieval:\n  batch_size: %s\n" % long_text)))
    assert "expected int, got 'xxx" in message and "characters)" in message
    assert len(message) < len(str(tmp_path)) + 2 * QUOTE_LIMIT

    error = refused(None, ("retrieval.batch_size=%s" % long_text,))  # the override is the source: cut too
    assert len(str(error)) < 3 * QUOTE_LIMIT


def test_quote_value_is_short_and_never_expands_shared_values():
    value: list = ["lol"] * 10
    for _ in range(30):  # 10**31 strings if written out
        value = [value] * 10
    started = time.perf_counter()
    quoted = quote_value(value)
    assert time.perf_counter() - started < 1 and len(quoted) <= QUOTE_LIMIT
    assert quote_value("ten") == "'ten'" and quote_value(3.5) == "3.5" and quote_value(True) == "True"
    cut = quote_value("y" * 1000)
    assert len(cut) <= QUOTE_LIMIT and cut.startswith("'yyy")
