"""Real data from registry packages (fetch), Benchmark A's shifted target domain, and the demo set-up."""
