# Fine-tuning from ImageNet weights for a few hundred to a few thousand iterations on a CPU or one GPU:
# SegFormer's recipe (AdamW, poly decay, decoder lr x10, no decay on norms) with a higher base lr than its
# 6e-5, which is set for 160k iterations.
optim = dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01,
             no_decay_keys=[], norm_decay=False, decoder_lr_mult=10.0)
disc_optim = dict(type='Adam', lr=1e-4, betas=(0.9, 0.99))
lr_schedule = dict(power=1.0, min_lr=0.0, warmup_iters=20, warmup_ratio=1e-6)
# the spec's source pipeline: random resize 0.5-2x, crop, flip, photometric distortion (of target images too)
augment = dict(flip=True, photometric=True, resize=(0.5, 2.0))
