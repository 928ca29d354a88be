"""What the decoder reads: the frozen encoder's tokens against oracle tokens, on one question family.

    python -m litlab.study run image_tokens                    # existence ("is there a red star?")
    python -m litlab.study run image_tokens:family=count       # any scenes_vqa or text_vqa family

When a family stays near chance, this study says whether the decoder or the tokens are to blame.
The same decoder and recipe are trained on that family alone, reading the shipped encoder's
tokens (the reference), oracle tokens (one-hot color and shape of the object each token covers,
`litlab/oracle_tokens.py`), the encoder's tokens carrying those oracle features in place of their
first 16, a random encoder of the same architecture, or no image at all (the language prior).
One more arm changes the supervision, not the tokens: `encoder_cotrain` reads the encoder's
tokens but trains on a mixture of the family's questions and a dense task at equal rates (scene
captions, which name every object's color and shape; reading the word for text families), so it
sees half as many of the family's questions. Its data.max_len is the quickstart's 36, which fits
captions, so its decoder also has 8 more (unused by the family) position embeddings.
And one changes how the decoder meets the tokens: `prefix` reads the encoder's tokens as the first
positions of its own sequence (`decoder.conditioning="prefix"`), so every layer's self-attention
and MLP work on them, where cross-attention only reads them. It costs about 2.5x the step time.
`posemb` adds the ViT's fixed 2D sin-cos position code to the tokens the decoder reads
(`decoder.image_posemb="sincos2d"`): the frozen encoder keeps positions only in part (a linear
probe recovers the column of 0.80 of its tokens on scenes, of all of them at random init), and
attention alone is blind to token order, so this arm asks whether spatial questions lack it.
An oracle far above the encoder means the tokens are the bound; an oracle near it means the
decoder or its steps are. Where the encoder's tokens with the oracle's features inside them do
as well as the oracle, the encoder's other features do not hide a clean signal, so the encoder
lacks one; where they do as badly as the encoder, the decoder does not find one among them.
"""

import dataclasses

from litlab.configs.studies import _settings
from litlab.data import language
from litlab.study import Study

# The dense task each image source is co-trained with in the encoder_cotrain arm.
DENSE_TASK = {"scenes_vqa": "scenes_caption", "text_vqa": "words_ocr"}
FAMILIES = {**{f: "scenes_vqa" for f in language.FAMILIES}, **{f: "text_vqa" for f in language.TEXT_FAMILIES}}

# The search over 64 tokens is learned late or not at all: from oracle tokens the quickstart's
# decoder (width 256, batch 128) leaves the answer prior after about 200 steps, while a width-128
# decoder (500 steps) or batch 64 (400 steps) had not left it (existence, one seed each). So
# `fast` keeps the quickstart's decoder and batch, trains 400 steps on one family's questions of
# 8,000 images, scores 500 images per split, and runs the two arms that answer the question
# (about 6 minutes a run on 2 cores). `full` trains the same recipe 1,000 steps, where one oracle
# seed had reached 0.95 and one encoder seed 0.51, and adds the encoder+oracle tokens, the random
# encoder, the language prior, co-training, prefix conditioning and the position code: 24 runs of 7 to 22 minutes
# (prefix the longest), which `study run ... --arms encoder,oracle` splits up.
# Its data.max_len of 28 fits the longest example of any single family (comparison, 27 tokens)
# and saves the step the padding that the quickstart's mixture needs.
FAST = {"decoder.width": 256, "decoder.num_heads": 4, "decoder.mlp_dim": 1024, "batch_size": 128,
        "total_steps": 400, "schedule.warmup_steps": 50, "data.limit": 8000, "eval.limit": 500,
        "checkpoint_every": 200, "log_every": 25}
FULL = {**FAST, "total_steps": 1000, "data.max_len": 28, "checkpoint_every": 250}


def get_study(arg=None):
    key, _, family = (arg or "family=existence").partition("=")
    if key != "family" or family not in FAMILIES:
        raise ValueError(f"image_tokens takes 'family=F' with F one of {sorted(FAMILIES)}, got {arg!r}.")
    task = f"{FAMILIES[family]}_{family}"
    # Scored on the family's task only, like every other arm; max_len 36 fits captions.
    cotrain = {"mixture": f"{task}+{DENSE_TASK[FAMILIES[family]]}", "eval.tasks": [task], "data.max_len": 36}
    settings = _settings.all_settings(smoke={"mixture": task}, fast={**FAST, "mixture": task},
                                      full={**FULL, "mixture": task})
    # The smoke encoder is already a random one (no checkpoint), so that arm would repeat the reference.
    settings["smoke"] = dataclasses.replace(settings["smoke"], arms=("encoder", "oracle", "encoder_oracle",
                                                                         "encoder_cotrain", "prefix", "posemb",
                                                                         "no_image"))
    settings["fast"] = dataclasses.replace(settings["fast"], arms=("encoder", "oracle"))
    return Study(
        name=f"image_tokens_{family}",
        question=f"Is the {family} family bound by the encoder's tokens or by the decoder?",
        arms={"encoder": {}, "oracle": {"inputs.image_tokens": "oracle"},
              "encoder_oracle": {"inputs.image_tokens": "encoder+oracle"}, "random_encoder": {"encoder.path": ""},
              "encoder_cotrain": cotrain, "prefix": {"decoder.conditioning": "prefix"},
              "posemb": {"decoder.image_posemb": "sincos2d"},
              "no_image": {"inputs.image": False}},
        reference="encoder",
        settings=settings)
