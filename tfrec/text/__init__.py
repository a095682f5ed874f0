"""Text features: in-graph BERT tokenization, a pretrained BERT encoder, embedding cache, fusion.

Importing this package does not import TensorFlow; its modules do.
"""
