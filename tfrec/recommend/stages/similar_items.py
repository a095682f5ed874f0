"""Stage 4: similar items (item -> items) from the item tower, checked on valid.

The check: does the list of the user's newest history item hold the user's valid target?
The zero-shot text vectors get the same check, as the baseline.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.tables import RecommendationData
from tfrec.evaluation.recommend import rank_metrics
from tfrec.recommend import train as rt
from tfrec.recommend.metrics import SimilarItems
from tfrec.recommend.model import SequentialRecommender
from tfrec.retrieval.index import build_index, search_index

SAMPLES = 3


def similar_items(config: Config, data: RecommendationData, model: SequentialRecommender,
                  text_vectors: Optional[np.ndarray]) -> SimilarItems:
    """recall@10 of the valid target among the 10 items nearest the newest history item, per vector space; sample lists."""
    history, _ = data.valid.padded_histories(config.recommendation.max_history)
    items = rt.item_matrix(model)
    last = history[:, -1]
    known = last >= 0
    spaces: dict[str, dict[str, float]] = {}
    for name, matrix in (("item tower", items), ("zero-shot text", text_vectors)):
        if matrix is None:
            continue
        index = build_index(config.retrieval.index, matrix, k=11)
        top, _ = search_index(index, matrix[last[known]], k=11)
        top = np.asarray(top).astype(np.int64)
        # Drop the query item itself from its own list (it is its own nearest neighbour).
        lists = np.array([[r for r in row if r != q][:10] for row, q in zip(top, last[known])])
        spaces[name] = rank_metrics(lists, data.valid.targets[known], [10])
    titles = data.catalog.text().astype(str)
    index = build_index(config.retrieval.index, items, k=6)
    top, _ = search_index(index, items[:SAMPLES], k=6)
    samples = [{"item": titles[i][:80], "similar": [titles[int(j)][:80] for j in row if int(j) != i][:5]}
               for i, row in enumerate(np.asarray(top))]
    return SimilarItems(examples=int(known.sum()), spaces=spaces, samples=samples)
