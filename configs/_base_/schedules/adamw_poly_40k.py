# SegFormer schedule of the paper: AdamW lr 6e-5 wd 0.01 (no decay on norm / pos_block), poly power 1
# with 800 linear warm-up iterations; discriminators Adam lr 1e-5 betas (0.9, 0.99), same schedule.
optim = dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01,
             no_decay_keys=['pos_block', 'norm'], norm_decay=False, decoder_lr_mult=1.0)
disc_optim = dict(type='Adam', lr=1e-5, betas=(0.9, 0.99))
lr_schedule = dict(power=1.0, min_lr=0.0, warmup_iters=800, warmup_ratio=1e-6)
# paper: 40k iterations, 2 GPUs x 2 samples, 384 crops; a job's explicit params take precedence
train = dict(iterations=40000, batch_size=4, crop=384)
# the spec's source pipeline: random resize 0.5-2x (mmseg RandomResize ratio_range), crop, flip, and
# mmseg PhotoMetricDistortion's defaults (of target images too)
augment = dict(flip=True, photometric=True, resize=(0.5, 2.0))
