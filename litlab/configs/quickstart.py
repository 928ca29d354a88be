"""The quickstart: a 2-layer decoder on the shipped frozen encoder, all five embedded tasks.

    python -m litlab.train --config litlab/configs/quickstart.py --workdir workdirs/quickstart
    python -m litlab.train --config litlab/configs/quickstart.py:smoke --workdir /tmp/w --config.total_steps=4

Every key below is valid on the command line as --config.KEY=VALUE; an unknown key fails at start.
"""

import ml_collections

from litlab.configs import pretrain_encoder


def get_config(arg=None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use none or 'smoke'.")
    c = ml_collections.ConfigDict()
    # The model's randomness: init, dropout, mixture order. The benchmark's content has its own
    # seed (data.seed), which studies leave alone, so every seed is scored on the same test set.
    c.seed = 0

    # Data: a mixture of the embedded tasks; prompts and their specificity are a study axis.
    c.mixture = "all_weighted"  # questions and reading at twice the rate of objects and captions
    c.prompt_style = "natural"  # none | token | natural
    c.prompt_shared = False
    # How the question meets the image (the modality-combination axis): in the decoder's prompt,
    # as memory beside the image tokens (the prompt keeps only the task cue), or withheld; and
    # image=False withholds the image (the text-only arm: the language prior).
    # image_tokens: "encoder", "oracle" (one-hot color and shape of the object each token covers,
    # from the renderer: what a decoder reaches from perfect tokens; litlab/oracle_tokens.py), or
    # "encoder+oracle" (the encoder's tokens with those one-hot features in place of their first 16).
    c.inputs = ml_collections.ConfigDict(dict(question="prompt", image=True, image_tokens="encoder"))
    # seed: the benchmark's content (which images, which questions), fixed like a real dataset's.
    # limit: images per task's train split; 8,000 keeps the feature cache build near a minute.
    # question_len: question tokens held as memory when inputs.question="memory".
    c.data = ml_collections.ConfigDict(dict(seed=0, resolution=64, max_len=36, limit=8000, question_len=24))

    # The frozen encoder: the shipped pretrained ViT (big_vision .npz), same architecture as
    # the config that pretrained it. trainable: False (locked), True, or a block index N.
    # seed: the init of an encoder without a checkpoint (path=""); like the data, it is fixed
    # across the seeds of a study, so every run reads the same frozen features.
    c.encoder = ml_collections.ConfigDict(dict(
        path="data/encoder/vit_pretrained.npz", model=pretrain_encoder.get_config().model.to_dict(),
        trainable=False, seed=0))
    # 2 layers is the paper's choice for the LiT-decoder. image_posemb: a position code added to the
    # image tokens (none | sincos2d | learn); the encoder's tokens keep only part of theirs.
    c.decoder = ml_collections.ConfigDict(dict(
        width=256, depth=2, num_heads=4, mlp_dim=1024, dropout=0.0, conditioning="cross",
        tie_embeddings=True, image_posemb="none"))

    # Sized so that `make demo` (render, cache, train, evaluate) fits in 15 minutes on 2 CPU cores.
    c.batch_size = 128
    c.total_steps = 500
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=2e-3, b1=0.9, b2=0.98, weight_decay=1e-4, grad_clip_norm=1.0))
    c.schedule = ml_collections.ConfigDict(dict(name="cosine", warmup_steps=50))  # or rsqrt
    c.label_smoothing = 0.0
    c.freeze = []  # extra big_vision-style regexes over param names, e.g. "^decoder/embed/"
    c.matmul_precision = "bfloat16"  # bfloat16 inputs with float32 accumulation, or float32

    c.feature_cache = "memory"  # memory | disk | none (encoder in the loop)
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.log_every = 20
    c.eval_every = 0  # 0: evaluate at the end only
    # score_classes: also rank every class name by likelihood (CapPa-style "exact_match_scoring"
    # for classification tasks); it costs about as much as decoding all other tasks together.
    c.eval = ml_collections.ConfigDict(dict(
        split="test", decode="greedy", limit=300, batch_size=256, tasks=[], score_classes=True))  # tasks: [] = all

    # big_vision-style device mesh: the batch is sharded over all devices; params replicated or
    # FSDP-sharded over the same axis.
    c.mesh = ml_collections.ConfigDict(dict(data=-1))
    c.sharding_strategy = "replicate"  # replicate | fsdp

    if arg == "smoke":
        c.data.limit = 24
        c.encoder.path = ""  # a tiny random encoder: tests measure the machinery, not accuracy
        c.encoder.model = dict(patch_size=(16, 16), width=32, depth=1, mlp_dim=64, num_heads=2,
                               posemb="learn", pool_type="gap")
        c.decoder.update(width=32, depth=1, num_heads=2, mlp_dim=64)
        c.batch_size = 8
        c.total_steps = 6
        c.schedule.warmup_steps = 2
        c.checkpoint_every = 2
        c.log_every = 1
        c.matmul_precision = "float32"
        c.eval.update(limit=4, batch_size=8)
    return c
