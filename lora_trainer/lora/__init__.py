"""LoRA modules, kohya key naming and the .safetensors file format (core: torch + safetensors only)."""
