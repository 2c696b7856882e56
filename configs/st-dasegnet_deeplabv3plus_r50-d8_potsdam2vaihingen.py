# ST-DASegNet, DeepLabV3+ ResNetV1c-50, ISPRS Potsdam IRRG -> Vaihingen IRRG.
_base_ = ['./_base_/models/deeplabv3plus_r50-d8.py', './_base_/adaptation/st-dasegnet.py',
          './_base_/schedules/sgd_poly_40k.py']
model = dict(decode_head=dict(num_classes=6, loss_decode=dict(class_weight=[1.0, 1.0, 1.0, 1.25, 1.5, 1.5])))
adaptation = dict(
    discriminator=dict(num_layers=3),
    pseudo_class_weight=[1.01, 1.01, 1.51, 1.51, 2.01, 2.01])
