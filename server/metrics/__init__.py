"""Server metrics: Prometheus series and the statistics behind them (label drift per adapter)."""
