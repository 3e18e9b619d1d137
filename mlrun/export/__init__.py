"""Inference artifacts from a trained run: formats, quantization, verification (`mlrun export`)."""
