# CPU schedule for the tiny MiT from random initialisation: the paper's AdamW/poly recipe with a lr
# suited to training from scratch for a few hundred iterations (no pretrained weights exist for it).
optim = dict(type='AdamW', lr=6e-4, betas=(0.9, 0.999), weight_decay=0.01,
             no_decay_keys=['pos_block', 'norm'], norm_decay=False, decoder_lr_mult=1.0)
disc_optim = dict(type='Adam', lr=1e-4, betas=(0.9, 0.99))
lr_schedule = dict(power=1.0, min_lr=0.0, warmup_iters=20, warmup_ratio=1e-6)
# the spec's source pipeline: random resize 0.5-2x (mmseg RandomResize ratio_range), crop, flip, and
# mmseg PhotoMetricDistortion's defaults (of target images too)
augment = dict(flip=True, photometric=True, resize=(0.5, 2.0))
