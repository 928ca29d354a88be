"""Pretraining of litlab's shipped ViT encoder (see litlab/pretrain.py and data/encoder/CARD.md).

    python -m litlab.pretrain --config litlab/configs/pretrain_encoder.py --workdir workdirs/pretrain
    python -m litlab.pretrain --config litlab/configs/pretrain_encoder.py:smoke --config.total_steps=5

The argument "smoke" gives a tiny model and pool that train end to end in seconds (tests).
"""

import ml_collections

# The decoder's train/val/test images use seeds 0..99; the encoder sees other images.
ENCODER_DATA_SEED = 10_000


def get_config(arg=None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use none or 'smoke'")
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Small enough to see 384k images in about an hour on 2 CPU cores (see CARD.md), and patch 8 on
    # 64x64 inputs keeps 64 tokens: the grid the decoder attends to for positions and letters.
    # A fixed sin-cos posemb gives every token its position from step 0; a learned one had to
    # be learned first and trained slower in this budget.
    c.model = ml_collections.ConfigDict(dict(
        patch_size=(8, 8), width=128, depth=4, mlp_dim=512, num_heads=4,
        posemb="sincos2d", pool_type="gap"))

    # Only "train" splits are trained on: held-out color-shape pairs and held-out words are
    # rendered in the "compositional" split alone, so they never reach the encoder.
    # Validation uses the sources' "val" split under the same (encoder-only) seed.
    c.data = ml_collections.ConfigDict(dict(
        sources=dict(objects=0.15, scenes=0.2, words=0.4, text_scenes=0.25),
        pool_size=56_000, val_size=1_000, seed=ENCODER_DATA_SEED, resolution=64))

    # Weight of the per-token term (0: image-level labels only, pure JFT-style; see pretrain.py).
    c.dense_weight = 1.0
    # Reading (litlab/reading.py): a linear head names each token's letters (glyph targets from
    # the renderer's glyph boxes), and/or a linear CTC reader spells words images from the token
    # columns. 0 switches a term off.
    c.glyph_weight = 4.0
    c.ctc_weight = 1.0
    # A big_vision ViT .npz to start from ("" = random init); its `head` is not loaded.
    c.init = ""
    c.batch_size = 64
    c.total_steps = 6500
    c.lr = 2e-3
    c.warmup_steps = 300
    c.wd = 0.05  # decoupled (optax.adamw), on weight matrices only
    c.grad_clip_norm = 1.0
    c.eval_every = 1000
    c.checkpoint_every = 250  # with --workdir; a rerun resumes from the newest checkpoint
    c.log_every = 10
    c.save_dtype = "float32"
    c.out = "data/encoder/vit_pretrained.npz"

    if smoke:
        c.model.update(width=32, depth=1, mlp_dim=64, num_heads=2)
        c.data.update(pool_size=16, val_size=32)  # one batch, repeated: the loss must fall
        c.ctc_weight = 1.0  # both reading terms run in the smoke tests
        c.batch_size = 16
        c.total_steps = 16
        c.warmup_steps = 2
        c.lr = 2e-2
        c.eval_every = 0  # only at the end
        c.checkpoint_every = 8
        c.log_every = 1
        c.out = ""
    return c
