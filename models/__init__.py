"""Trained models and their inference (ONNX): text embeddings, the offline sentiment scorer, the price model."""
