"""hotswap server: one vLLM engine, many hot-swappable task adapters."""
