"""Prompt a trained model with your own text: the function behind the notebook prompt widget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from litlab import decode
from litlab.data import pipeline
from litlab.data.tokenizer import Tokenizer


def answer(model, params, tok: Tokenizer, images: np.ndarray, prompts: list[str], *, method: str = "greedy",
           max_new_tokens: int | None = None, seed: int = 0, questions: list[str] | None = None) -> list[str]:
    """Generated text for each (uint8 image [R, R, 3], prompt) pair.

    The prompt is laid out exactly as in training (BOS prompt SEP), so a prompt written the way a
    task's prompts are written gets that task's behaviour; anything else shows how the decoder
    generalizes. A model trained with the question as memory (inputs.question="memory") takes
    the question separately, in `questions` ("" for none), and only the task cue as its prompt.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [B, R, R, 3], got {images.dtype} {images.shape}.")
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts.")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be a positive integer (or None for as many as fit), got {max_new_tokens!r}.")
    encoded = tok.encode(prompts)
    unk = tok.sp.unk_id()
    for prompt, p in zip(prompts, encoded):
        if unk in p:
            missing = sorted({c for c in prompt if not c.isspace() and unk in tok.encode([c])[0]})
            raise ValueError(f"prompt {prompt!r} has characters the tokenizer does not know ({''.join(missing)!r}); "
                             "they would all become the same unknown token. Rephrase them in its vocabulary "
                             "(lower-case ASCII words, as in the training prompts).")
    ids = [[tok.bos_id] + p + [tok.sep_id] for p in encoded]
    longest = max(len(i) for i in ids)
    max_len = model.decoder_cfg["max_len"]
    max_new_tokens = max_new_tokens or max_len - longest
    if longest + max(max_new_tokens, 1) > max_len:
        raise ValueError(f"a prompt is {longest} tokens long, and with max_new_tokens={max_new_tokens} that "
                         f"exceeds this model's {max_len} tokens; shorten the prompt or ask for fewer tokens.")
    question_len = model.decoder_cfg.get("question_len", 0)
    extra = {}
    if question_len:
        if questions is None or len(questions) != len(prompts):
            raise ValueError(f"this model reads the question as memory: pass questions= (one per prompt, "
                             f"'' for none), got {questions!r}.")
        extra["question_tokens"] = jnp.asarray(pipeline.encode_questions(tok, list(questions), question_len)[0])
    elif questions is not None:
        raise ValueError("this model reads the question in its prompt; put it there instead of questions=.")
    block = np.full((len(ids), longest), tok.pad_id, np.int32)
    for i, row in enumerate(ids):
        block[i, :len(row)] = row
    out = decode.generate(model, params, jnp.asarray(block), jnp.asarray([len(r) for r in ids], jnp.int32),
                          images=jnp.asarray(images, jnp.float32) / 127.5 - 1.0, method=method,
                          max_new_tokens=max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                          rng=jax.random.PRNGKey(seed), **extra)
    tokens = np.asarray(out[0])
    if tokens.ndim == 3:  # beam search: the best hypothesis
        tokens = tokens[:, 0]
    return tok.decode_batch(tokens)
