# DeepLabV3+ schedule of the paper: SGD momentum 0.9 wd 5e-4, lr 1e-3 (2e-3 decoders), poly 0.9, min 1e-5;
# discriminators Adam lr 2.5e-4 betas (0.9, 0.99), same schedule.
optim = dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=5e-4, decoder_lr_mult=2.0)
disc_optim = dict(type='Adam', lr=2.5e-4, betas=(0.9, 0.99))
lr_schedule = dict(power=0.9, min_lr=1e-5, warmup_iters=0)
train = dict(iterations=40000, batch_size=4, crop=384)
# the spec's source pipeline: random resize 0.5-2x (mmseg RandomResize ratio_range), crop, flip, and
# mmseg PhotoMetricDistortion's defaults (of target images too)
augment = dict(flip=True, photometric=True, resize=(0.5, 2.0))
