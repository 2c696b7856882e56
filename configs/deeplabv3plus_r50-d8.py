# DeepLabV3+ ResNetV1c-50 (output stride 8) with the paper's SGD/poly schedule; any method.
_base_ = ['./_base_/models/deeplabv3plus_r50-d8.py', './_base_/schedules/sgd_poly_40k.py']
adaptation = dict(discriminator=dict(num_layers=3))  # applied when the method is st-dasegnet
