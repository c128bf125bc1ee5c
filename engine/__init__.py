"""Timbre's engine: datasets, training and synthesis for XTTS-v2 voice fine-tuning.

Nothing here imports gradio; the web UI (``webui/``) calls into this package.
"""
