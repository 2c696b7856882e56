"""Benchmarks run by `geoadapt bench`: A (adaptation quality); others live beside it."""
