"""A run writes only into its run folder and the cache folders: never into the working directory."""
from __future__ import annotations

from pathlib import Path

from tfrec.cli.main import main
from tfrec.text.cache import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_train_from_another_directory_leaves_it_untouched(homedepot_slice, tmp_path, monkeypatch, capsys):
    work, run_dir = tmp_path / "work", tmp_path / "elsewhere" / "run"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("TFREC_DATA_DIR", raising=False)
    sets = ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]", "retrieval.top_k=10", "retrieval.epochs=0",
            "ranking.epochs=0", "ranking.candidate_losses=[]", "evaluation.baselines=false"]  # text.cache_dir left unset
    args = ["train", "--config", str(ROOT / "configs" / "default.yaml"), "--run-dir", str(run_dir)]
    assert main(args + [arg for item in sets for arg in ("--set", item)]) == 0, capsys.readouterr().err

    assert sorted(p.name for p in work.iterdir()) == []
    assert (run_dir / "metrics.json").is_file()
    shards = list((tmp_path / "xdg" / "tfrec" / "embeddings").iterdir())
    assert shards and all((shard / "manifest.json").is_file() for shard in shards)
