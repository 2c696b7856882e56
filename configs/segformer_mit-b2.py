# SegFormer MiT-B2 with the paper's AdamW/poly schedule; any method (source-only, st-dasegnet, ...).
_base_ = ['./_base_/models/segformer_mit-b2.py', './_base_/schedules/adamw_poly_40k.py']
