# SimCLR (Chen et al., ICML 2020): two strongly augmented views of each window, encoder -> projection MLP ->
# NT-Xent; with local=True also the local contrastive loss of Chaitanya et al. (NeurIPS 2020) on the decoder's
# last feature map (regions at the same ground position in the two views are positives).
pretraining = dict(
    type='simclr',
    temperature=0.2,              # NT-Xent: cosine similarity / temperature (the paper: 0.1-0.5)
    projection=dict(hidden=256, out=64),  # MLP on the pooled deepest backbone level; features are taken before it
    local=False,                  # add the local contrastive loss (decoder side; the decode head is pretrained too)
    local_weight=1.0,             # its weight beside the global term
    local_temperature=0.2,
    local_grid=4,                 # anchor regions per view: a local_grid x local_grid grid
    local_region=3,               # feature cells (a square) averaged into one region
    local_dim=64,                 # width of the 1x1-conv projection of the decoder map
    # geometry of each view (tracked, so positions map between the views): a random box of this share of the
    # window's area and aspect ratio, resized to the crop; random flips and 90-degree rotations
    views=dict(scale=(0.3, 1.0), ratio=(0.75, 1.333), flip=True, rotate=True),
    # intensity changes on the normalised bands (any band count; no RGB colour jitter): per-band brightness
    # offset (in band standard deviations) and contrast factor, Gaussian blur, Gaussian noise
    photometric=dict(brightness=0.4, contrast=(0.6, 1.4), blur_p=0.5, blur_sigma=(0.1, 1.5), noise=0.1),
    # pretraining from scratch has its own recipe: these replace the config's optim / lr_schedule
    optim=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05, norm_decay=False),
    lr_schedule=dict(power=1.0, min_lr=0.0, warmup_iters=50, warmup_ratio=1e-3),  # warm-up: at most a tenth of the run
)
