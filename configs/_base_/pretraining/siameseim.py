# Siamese Image Modeling (Tao et al., CVPR 2023): the online branch sees a masked view and predicts the dense
# representation of a second, differently augmented view at the relative positions between the two; the target
# branch, an EMA of the online one, encodes the second view. With a CNN/mmseg encoder the mask zeroes patches of
# the input, and the dense representation is the decode head's last feature map (pretrained with the backbone).
pretraining = dict(
    type='siameseim',
    mask_ratio=0.5,               # share of the online view's patches zeroed
    mask_patch=8,                 # side of a masked patch, pixels
    target_grid=8,                # the second view's representation is predicted on a target_grid^2 grid
    dim=64,                       # width of the projected dense representation
    predictor_hidden=256,         # the predictor MLP: sampled online feature + global context + relative position
    position_frequencies=4,       # Fourier features of the relative position
    ema=0.99,                     # target branch = EMA of the online branch (rises to 1 over the run, cosine)
    views=dict(scale=(0.3, 1.0), ratio=(0.75, 1.333), flip=True, rotate=True),
    photometric=dict(brightness=0.4, contrast=(0.6, 1.4), blur_p=0.5, blur_sigma=(0.1, 1.5), noise=0.1),
    optim=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05, norm_decay=False),
    lr_schedule=dict(power=1.0, min_lr=0.0, warmup_iters=50, warmup_ratio=1e-3),  # warm-up: at most a tenth of the run
)
