"""The stages of a search training run, in the order ``tfrec.search.pipeline.train_search`` runs them.

Each module holds one stage: a function that takes the run's :class:`~tfrec.search.stages.context.SearchContext`
and the typed results of earlier stages, and returns its own typed result (a dataclass).

* ``queries``: split the training queries (two towers / ranker), the valid eval set and its tuning half;
* ``lexical``: the in-graph BM25 index over the catalog;
* ``baselines``: zero-shot MiniLM vectors and the bm25s / MiniLM baselines;
* ``towers``: the two towers (replay, warm start, mined negatives, early stopping) and their vectors;
* ``hybrid``: hybrid weights on the tuning half, retrieval on valid, the dense TFRS index comparison;
* ``ranker``: ranker lists, one head per candidate loss with its dense fusion, the kept head on valid;
* ``cross_encoder``: the optional cross-encoder re-ranker;
* ``continual``: a warm start's previous run and its valid queries (forgetting);
* ``evaluation``: the typed metrics whose ``to_json()`` is metrics.json;
* ``artifacts``: the files a search run leaves beside the model weights.
"""
