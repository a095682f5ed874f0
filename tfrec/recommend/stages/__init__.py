"""The stages of a sequential recommendation run, in the order ``tfrec.recommend.pipeline.train_recommendation`` runs them.

item_text (frozen text vectors of the items) -> training (select epochs, then re-train) ->
evaluation (full ranking against the baselines, seen vs cold targets) -> similar_items (item ->
items from the item tower) -> artifacts (weights, vocabulary, settings, metrics.json, per_query.npz).
Each stage takes config sections and typed inputs and returns a typed result.
"""
