"""Training (paper steps 2-3): LoRA fine-tuning and ControlNet on sketches, sharing one loop in core.py.

lora.py and controlnet.py hold the stage functions `train_lora` and `train_controlnet` and what is specific to
each; config.py the typed settings (presets in configs/); data.py and cache.py the samples; checkpoints.py
atomic, resumable checkpoints; card.py the model card.
"""
