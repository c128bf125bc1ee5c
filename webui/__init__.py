"""Timbre's web UI: a Gradio app over ``engine``.

``python -m webui`` launches it; :func:`webui.app.build_app` builds it. Each tab lives in
``webui/tabs/<tab>.py``. Nothing here runs at import.
"""
