"""Model files: converting a BlinkDL .pth to GGUF (convert.py)."""
