"""The search path: the pipeline behind `tfrec train` for search data, hybrid retrieval, ranker data, exports."""
