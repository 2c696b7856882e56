# EfficientNet-Lite1 from ImageNet weights (`geoadapt weights fetch efficientnet-lite1`) + SegformerHead; any method.
_base_ = ['./_base_/models/efficientnet-lite1_segformer-head.py', './_base_/schedules/adamw_finetune.py']
