"""Sharing LoRAs inside a team: a versioned manifest (`publish`), fetching what is new (`pull`),
and identifying a file (`info`, Civitai look-up by hash).

Why a package of its own: it sits above the download engine (every pull is an ordinary verified
download) and the LoRA file format (hashes, metadata), and below the CLI and the Downloader tab.
It imports neither gradio nor the WebUI.
"""
