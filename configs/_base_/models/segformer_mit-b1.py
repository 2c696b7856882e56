# SegFormer: MiT-B1 backbone (embed 64, layers [2,2,2,2]) + SegformerHead (256 channels, dropout 0.1).
_base_ = ['./segformer_mit-b0.py']
model = dict(
    backbone=dict(embed_dims=64, num_layers=[2,2,2,2]),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
