# EfficientNet-Lite1 (wider/deeper than Lite0 by TF's lite coefficients) + SegformerHead; see the Lite0 file.
_base_ = ['./efficientnet-lite0_segformer-head.py']
model = dict(backbone=dict(arch='lite1'))
pretrained = 'efficientnet-lite1'
