# A tiny MiT (embed 16, one layer per stage) + a narrow SegformerHead, for CPU tests and demos.
# Patch strides 2-2-2-2 (output stride 16 instead of 32): Landsat-like 30 m pixels need finer
# features than a stride-32 map of a small crop gives.
_base_ = ['./segformer_mit-b0.py']
model = dict(
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], strides=[2, 2, 2, 2], sr_ratios=[4, 2, 1, 1],
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=[16, 32, 80, 128], channels=64, dropout_ratio=0.1))
