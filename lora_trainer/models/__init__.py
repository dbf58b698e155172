"""Model adapters: the seam between the pure-torch training core and a model library or host.

`base.ModelAdapter` is the contract. Implementations: `diffusers_sd` (standalone, diffusers),
`webui_ldm` / `webui_sgm` (A1111's own loaded model), `forge` (Forge). Only this package and
`hosts/` know a model library.
"""
