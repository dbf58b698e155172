"""Gradio blocks shared by the WebUI tabs and the standalone app.

The UI holds no training or download logic: it starts jobs (`lora_trainer.services`) and renders
their events. It runs on gradio 3.41 (A1111), 4.40 (Forge) and current gradio (the app), through
the few helpers in `compat`.
"""
