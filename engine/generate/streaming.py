"""Streaming XTTS-v2 speech: audio chunks as the GPT produces audio codes, with a small first
chunk so that the first audio comes early.

coqui's ``Xtts.inference_stream`` decodes after every ``stream_chunk_size`` codes (20 by
default, about 0.93 s of speech), so the first audio waits for 20 codes. Here the first chunk
is :data:`FIRST_CHUNK_CODES` codes and the rest :data:`CHUNK_CODES`. The rest follows coqui's
method, built from the same parts of its model (``gpt.compute_embeddings``,
``gpt.get_generator``, ``hifigan_decoder``, ``handle_chunks``): at each chunk the decoder runs
over all the GPT latents so far, and only the new part is yielded, cross-faded over
:data:`OVERLAP_SAMPLES` with the previous chunk. The chunks joined are the whole utterance.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from engine.errors import TimbreError

FIRST_CHUNK_CODES = 8
"""Audio codes before the first chunk is decoded: about 0.37 s of speech (22 050 Hz / 1024
samples per code ≈ 21.5 codes per second)."""

CHUNK_CODES = 20
"""Audio codes per later chunk (coqui's ``stream_chunk_size`` default), about 0.93 s."""

OVERLAP_SAMPLES = 1024
"""Samples (24 kHz) cross-faded between consecutive chunks (coqui's ``overlap_wav_len``)."""


class StreamTextError(TimbreError, ValueError):
    """A sentence longer than the GPT's text context."""


@torch.inference_mode()
def stream_xtts(
    model,
    text: str,
    language: str,
    gpt_cond_latent: torch.Tensor,
    speaker_embedding: torch.Tensor,
    first_chunk_codes: int = FIRST_CHUNK_CODES,
    chunk_codes: int = CHUNK_CODES,
    *,
    temperature: float = 0.75,
    length_penalty: float = 1.0,
    repetition_penalty: float = 10.0,
    top_k: int = 50,
    top_p: float = 0.85,
    speed: float = 1.0,
    enable_text_splitting: bool = False,
    **generate_kwargs,
) -> Iterator[torch.Tensor]:
    """Speech for ``text`` from a loaded coqui ``Xtts`` as 1-D float tensors at 24 kHz.

    Args:
        gpt_cond_latent: (1, 32, width) conditioning latents; speaker_embedding: (1, 512, 1).
        first_chunk_codes, chunk_codes: codes decoded in the first / each later chunk (≥ 1).
        temperature … enable_text_splitting: as ``Xtts.inference`` (sampling, speed as a
            length scale of the latents, coqui's sentence splitting).
        generate_kwargs: passed to Hugging Face ``generate`` (``max_new_tokens``).

    Raises:
        StreamTextError: a sentence has as many text tokens as the GPT's limit or more.
    """
    from TTS.tts.layers.xtts.tokenizer import split_sentence

    language = language.split("-")[0]  # as coqui: the tokenizer knows "zh", not "zh-cn"
    length_scale = 1.0 / max(speed, 0.05)
    device = gpt_cond_latent.device
    sentences = (
        split_sentence(text, language, model.tokenizer.char_limits[language]) if enable_text_splitting else [text]
    )
    for sentence in sentences:
        tokens = torch.IntTensor(model.tokenizer.encode(sentence.strip().lower(), lang=language)).unsqueeze(0)
        if tokens.shape[-1] >= model.args.gpt_max_text_tokens:
            raise StreamTextError(
                f"a sentence of {tokens.shape[-1]} text tokens is longer than XTTS-v2 can speak "
                f"({model.args.gpt_max_text_tokens - 1}); split the text"
            )
        generator = model.gpt.get_generator(
            fake_inputs=model.gpt.compute_embeddings(gpt_cond_latent, tokens.to(device)),
            top_k=top_k, top_p=top_p, temperature=temperature, do_sample=True, num_beams=1,
            num_return_sequences=1, length_penalty=float(length_penalty),
            repetition_penalty=float(repetition_penalty), output_attentions=False,
            output_hidden_states=True, return_dict_in_generate=True, **generate_kwargs,
        )  # fmt: skip
        latents: list[torch.Tensor] = []
        previous = overlap = None
        pending, target, ended = 0, max(1, first_chunk_codes), False
        while not ended:
            try:
                _code, latent = next(generator)
                latents.append(latent)
                pending += 1
            except StopIteration:
                ended = True
            if not latents or not (ended or pending >= target):
                continue
            gpt_latents = torch.cat(latents, dim=0)[None, :]
            if length_scale != 1.0:
                gpt_latents = F.interpolate(gpt_latents.transpose(1, 2), scale_factor=length_scale, mode="linear")
                gpt_latents = gpt_latents.transpose(1, 2)
            wav = model.hifigan_decoder(gpt_latents, g=speaker_embedding.to(device)).squeeze()
            chunk, previous, overlap = model.handle_chunks(wav, previous, overlap, OVERLAP_SAMPLES, is_final=ended)
            pending, target = 0, max(1, chunk_codes)
            yield chunk
