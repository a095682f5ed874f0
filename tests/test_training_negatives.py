"""Hard negatives mined by the towers being trained (retrieval.hard_negative_source: model), end to end on a slice."""
from __future__ import annotations

import json
from pathlib import Path

from tfrec.cli.main import main


def test_search_run_with_model_mined_negatives(in_repo, homedepot_slice, tmp_path, capsys):
    sets = ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]", "retrieval.top_k=10", "retrieval.batch_size=8",
            "retrieval.epochs=2", "retrieval.hard_negatives=true", "retrieval.hard_negative_source=model",
            "retrieval.hard_negative_depth=5", "ranking.epochs=1", "evaluation.baselines=false",
            "run.output_dir=%s" % tmp_path, "text.cache_dir=%s" % (tmp_path / "cache"),
            "data.max_products=0", "data.max_train_queries=0", "data.max_valid_queries=0"]
    code = main(["train", "--config", "configs/quick.yaml", *[a for s in sets for a in ("--set", s)]])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    run = Path(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert "epoch 2: negatives mined by the current towers" in err  # progress: the log, on stderr
    retrieval = json.loads((run / "metrics.json").read_text())["training"]["retrieval"]
    assert retrieval["hard_negatives"] == "model" and len(retrieval["loss_per_epoch"]) == 2
    assert not (run / "checkpoints" / "retrieval").exists()  # removed with the mined pairs once the weights are saved
