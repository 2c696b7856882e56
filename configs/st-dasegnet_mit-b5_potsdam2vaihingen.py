# ST-DASegNet, SegFormer MiT-B5, ISPRS Potsdam IRRG -> Vaihingen IRRG (paper: 64.33 target mIoU).
# Class order: impervious, building, low vegetation, tree, car, clutter.
_base_ = ['./_base_/models/segformer_mit-b5.py', './_base_/adaptation/st-dasegnet.py',
          './_base_/schedules/adamw_poly_40k.py']
model = dict(decode_head=dict(num_classes=6, loss_decode=dict(class_weight=[1.0, 1.0, 1.0, 1.25, 1.5, 1.5])))
adaptation = dict(
    target_class_weight=[1.0, 1.0, 1.25, 1.25, 1.5, 1.5],
    pseudo_class_weight=[1.01, 1.01, 1.51, 1.51, 2.01, 2.01])
