"""The base layer: audio decoding and loudness (audio, audio_worker), Whisper transcription with VAD
(transcribe, whisper_runtime), speaker embeddings (speaker) and the scores WER/CER/SECS (scoring).
Arrows point down only: nothing here imports dataset/, generate/, training/ or models/.
"""
