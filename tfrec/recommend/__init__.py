"""Recommendation models: sequential next-item recommendation and the MovieLens multi-task model."""
