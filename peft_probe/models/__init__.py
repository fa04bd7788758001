"""Flax NNX transformer modules loadable from real weights (Llama family, BERT)."""
