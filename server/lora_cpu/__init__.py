"""Segment-grouped multi-LoRA kernels for vLLM on CPU, wired in through a vLLM plugin."""
