"""Modality combination: how the question meets the image.

prompt: the question in the decoder's prompt (the default);
memory: the question embedded and appended to the image tokens as memory the decoder attends to,
        with only the task cue in the prompt;
image_only: the question withheld (only the task cue);
text_only: the image withheld: the language prior every VQA score should be read against.
"""

from litlab.configs.studies import _settings
from litlab.study import Study


def get_study(arg=None):
    arms = {"prompt": {"inputs.question": "prompt"}, "memory": {"inputs.question": "memory"},
            "image_only": {"inputs.question": "none"},
            "text_only": {"inputs.question": "prompt", "inputs.image": False}}
    return Study(
        name="modality",
        question="Where should the question meet the image, and how much does each modality carry?",
        arms=arms, reference="prompt", settings=_settings.all_settings())
