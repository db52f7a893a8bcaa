"""Model files: the catalog of RWKV models on the Hub (catalog.py, catalog.json), what fits this
machine (machine.py, fit.py), downloads (download.py), converting a BlinkDL .pth to GGUF
(convert.py); `python -m core.models list|get` from a terminal (__main__.py)."""
