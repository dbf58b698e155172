"""Where LoRA Trainer runs: inside the WebUI (A1111 / Forge) or as its own app.

A `Host` gives the UI, the API and the jobs what differs between the two: folders, settings
(tokens), the access rule for server paths and downloads, the lock that keeps generation and
training apart, progress/stop wiring and the model to train (the WebUI's loaded checkpoint).
Nothing here imports `modules.*` at import time.
"""
