"""The generation stage: which weights speak (weights), conditioning on reference clips
(conditioning), synthesis and the output history (synthesis), streamed text chunks (streaming),
and export/import of a fine-tune (export).
"""
