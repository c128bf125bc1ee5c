"""The dataset stage: recordings -> verified clips with text (prepare), their checks (checks, quality),
the clip editor's edits (edit, records) and the cutting of clips (clips). Uses engine.speech.
"""
