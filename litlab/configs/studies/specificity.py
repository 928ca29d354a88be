"""Conditioning specificity: how precisely the decoder is told which task to do.

none: no task cue (the decoder must infer the task from the image and the question);
token: a task token ("vqa", "ocr", ...); natural: a natural-language instruction;
*_shared: one token or instruction for every task, so only its presence differs from none.
"""

from litlab.configs.studies import _settings
from litlab.study import Study


def get_study(arg=None):
    arms = {"natural": {"prompt_style": "natural"}, "token": {"prompt_style": "token"},
            "none": {"prompt_style": "none"},
            "natural_shared": {"prompt_style": "natural", "prompt_shared": True},
            "token_shared": {"prompt_style": "token", "prompt_shared": True}}
    return Study(
        name="specificity",
        question="Does telling the decoder which task to do help, and does the wording matter?",
        arms=arms, reference="natural", settings=_settings.all_settings())
