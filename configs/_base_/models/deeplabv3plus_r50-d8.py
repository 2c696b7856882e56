# DeepLabV3+: ResNetV1c-50, output stride 8 + DepthwiseSeparableASPPHead (512 ch, dilations 1/12/24/36,
# low-level branch 256 -> 48). Plain BN (no SyncBN in base configs).
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        type='ResNetV1c',
        in_channels=3,
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(
        type='DepthwiseSeparableASPPHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 12, 24, 36),
        c1_in_channels=256,
        c1_channels=48,
        dropout_ratio=0.1,
        num_classes=6,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, class_weight=None)),
    neck=None,
)
