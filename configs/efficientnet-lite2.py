# EfficientNet-Lite2 from ImageNet weights (`geoadapt weights fetch efficientnet-lite2`) + SegformerHead; any method.
_base_ = ['./_base_/models/efficientnet-lite2_segformer-head.py', './_base_/schedules/adamw_finetune.py']
