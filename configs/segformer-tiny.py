# Tiny SegFormer (MiT embed 16, 1 layer per stage, stride 16) for CPU tests, demos and Benchmark A; any method.
_base_ = ['./_base_/models/segformer_mit-tiny.py', './_base_/schedules/adamw_tiny.py']
