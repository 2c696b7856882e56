"""geoadapt models: networks, adaptation methods, training loop, metrics, bundles. Knows torch/mmseg; never imports service or workers."""
