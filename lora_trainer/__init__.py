"""LoRA Trainer: train kohya-format LoRAs for Stable Diffusion (and LLMs) and download models.

The package root stays import-light: the WebUI imports it at start-up, so nothing heavy
(torch, diffusers, gradio) is imported here.
"""

__version__ = "0.1.0"
