# EfficientNet-Lite0 from ImageNet weights (`geoadapt weights fetch efficientnet-lite0`) + SegformerHead; any method.
_base_ = ['./_base_/models/efficientnet-lite0_segformer-head.py', './_base_/schedules/adamw_finetune.py']
