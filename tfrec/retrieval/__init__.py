"""Two-tower retrieval (TensorFlow Recommenders): the model, its training loop and top-K indexes."""
