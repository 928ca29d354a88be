"""Scores for litlab's tasks, all of which are judged on generated text.

Each metric follows the definition the field reports numbers with, so that litlab's numbers can
be compared with published ones:

* classification: `exact_match`;
* captioning: `cider_d`, the CIDEr-D that pycocoevalcap's `Cider` class computes, on tokens from
  `ptb_tokenize`, a Java-free stand-in for the Stanford PTBTokenizer that pycocoevalcap runs;
* VQA: `vqa_accuracy`, the rule of the official VQAv2 evaluation script (GT-Vision-Lab/VQA);
* OCR and text-VQA: `anls` (ST-VQA / DocVQA) and `character_error_rate`.

Those are per-example (or, for CIDEr-D, per-id) functions. Evaluation code scores a whole split
by name instead: every corpus metric is one function `fn(predictions, references) -> float`
registered under one name with `@register("name")`, and `compute` / `compute_by_group` run the
named ones, so adding a metric means adding one function here rather than a branch at each
caller. Registered: exact_match, vqa_accuracy, anls (means of the per-example scores), cer
(corpus CER against the first reference) and cider_d (the corpus CIDEr-D).

Everything is pure Python (no NumPy, no Java), so the metrics run on any machine.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

__all__ = [
    "anls",
    "character_error_rate",
    "cider_d",
    "compute",
    "compute_by_group",
    "corpus_character_error_rate",
    "exact_match",
    "levenshtein",
    "mean",
    "ptb_tokenize",
    "register",
    "registered",
    "unregister",
    "vqa_accuracy",
]


def mean(scores: Iterable[float] | Mapping[Hashable, float]) -> float:
    """Average of per-example scores (a mapping's values, or any iterable).

    Raises instead of returning NaN for no scores, so an empty evaluation split is noticed.
    """
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not values:
        raise ValueError("mean() got no scores: the evaluation produced no examples to average.")
    return math.fsum(values) / len(values)


def _as_answer_list(answers: str | Sequence[str], what: str) -> list[str]:
    # A bare string would otherwise be iterated character by character and score silently wrong.
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError(f"{what} got an empty list of references; give at least one.")
    return answers


# ---------------------------------------------------------------------------------------------
# Classification


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(prediction: str, targets: str | Sequence[str]) -> float:
    """1.0 if `prediction` equals any target, else 0.0.

    Comparison is case-insensitive (`str.casefold`) after stripping surrounding whitespace and
    collapsing internal runs of whitespace to one space, so "Golden  Retriever\\n" matches
    "golden retriever". Punctuation is compared as is.
    """
    pred = _squash(prediction)
    return float(any(pred == _squash(t) for t in _as_answer_list(targets, "exact_match")))


# ---------------------------------------------------------------------------------------------
# Edit distance, ANLS, CER


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _anls_normalize(text: str) -> str:
    # DocVQA's evaluation: " ".join(text.strip().lower().split()). lower(), not casefold(), so
    # scores match the official ones on text such as "ß".
    return " ".join(text.lower().split())


def anls(prediction: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question (ST-VQA, DocVQA).

    Both sides are lowercased (`str.lower`), stripped, and have internal runs of whitespace
    collapsed to one space, as the DocVQA evaluation does, so a doubled space or a line break in
    an OCR reading is not charged as an edit. Against each answer, NL = edit distance / length of
    the longer string; the answer scores 1 - NL if NL < `threshold`, else 0 (so a near-miss OCR
    reading gets partial credit but an unrelated answer gets none). The result is the best score
    over the answers; the dataset ANLS is the `mean` of these.
    """
    pred = _anls_normalize(prediction)
    best = 0.0
    for answer in _as_answer_list(answers, "anls"):
        answer = _anls_normalize(answer)
        longest = max(len(pred), len(answer))
        nl = levenshtein(pred, answer) / longest if longest else 0.0
        if nl < threshold:
            best = max(best, 1.0 - nl)
    return best


def character_error_rate(prediction: str, target: str) -> float:
    """Edit distance / len(target) (an empty target counts as length 1).

    Computed on the raw strings: case, whitespace and punctuation errors all count, as OCR
    benchmarks expect. Can exceed 1 when the prediction is much longer than the target.
    """
    return levenshtein(prediction, target) / max(1, len(target))


def corpus_character_error_rate(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Total edits over total target characters, so long lines weigh more than short ones.

    This is the usual corpus CER; the mean of per-line `character_error_rate` is a different
    number that over-weights short lines.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"corpus_character_error_rate got {len(predictions)} predictions but {len(targets)} "
            "targets; pass one prediction per target, in the same order.")
    if not targets:
        raise ValueError("corpus_character_error_rate got no examples.")
    edits = sum(levenshtein(p, t) for p, t in zip(predictions, targets))
    return edits / max(1, sum(len(t) for t in targets))


# ---------------------------------------------------------------------------------------------
# VQAv2 accuracy (official GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py,
# as of its last change, a013f00, 2021-03-11). Copies from before that change, still vendored
# in many repos, always normalised the prediction but only de-punctuated the answers, and had a
# different punctuation list; their numbers can differ slightly from these.

_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!")
_VQA_DIGIT_COMMA = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its "(?!<=" is a lookahead (a typo for the
# lookbehind "(?<!"), which never fires on a ".", so it removes every period not followed by a
# digit ("yes." -> "yes", "2.5" kept, "5." -> "5").
_VQA_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (== 32) in sub()'s `count` slot, so at most 32 periods go.
_VQA_PERIOD_MAX_SUBS = 32
_VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
# The official contractions map, entry for entry (quirks included: "somebody'd" maps to
# "somebodyd"). Its capitalised keys (Id've, I'dve, Im, Ive) never match, because words are
# lowercased first; they are kept so the table stays the official one.
_VQA_CONTRACTIONS = dict(entry.split("=") for entry in """
aint=ain't arent=aren't cant=can't couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've couldve=could've didnt=didn't doesnt=doesn't dont=don't
hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd
hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
I'dve=I'd've Im=I'm isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll Ive=I've
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've shouldve=should've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll
thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
werent=weren't weve=we've whatll=what'll whatre=what're whats=what's whatve=what've
whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's
wont=won't wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've wouldve=would've
yall=y'all yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've yall'll=y'all'll
y'allll=y'all'll youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're
youve=you've
""".split())


def _vqa_punctuation(text: str) -> str:
    # Each mark is deleted where it touches a space (or anywhere, if the text has a digit-comma-
    # digit such as "1,000"), else replaced by a space ("hot-dog" -> "hot dog"). The test is on the
    # input text, not on the text as rewritten so far, exactly as in the official loop.
    strip_all = _VQA_DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        if strip_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_MAX_SUBS)


def _vqa_digits_articles(text: str) -> str:
    words = [_VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def _vqa_clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers (normally 10).

    As in the official script: newlines/tabs become spaces and both sides are stripped. Only if
    the human answers then disagree (more than one distinct string) are the answers AND the
    prediction normalised: punctuation (see `_vqa_punctuation`), lowercasing, number words to
    digits ("two" -> "2", "none" -> "0"), articles a/an/the dropped, and contractions restored
    ("dont" -> "don't"). When all answers are identical nothing is normalised, so "Yes" or "yes."
    against ten "yes" scores 0, exactly as the official evaluation scores it.

    The score is the mean over leaving out each answer in turn of min(1, matches among the
    others / 3): 0, 1, 2, 3, >=4 matches of 10 give 0, 0.3, 0.6, 0.9, 1.0. The same formula is
    used for any number >= 2 of answers. With a single answer nothing would be left after
    leaving one out, so the score is instead 1.0 if the prediction equals it (un-normalised, as
    for unanimous answers) else 0.0.
    """
    answers = [_vqa_clean_whitespace(a) for a in _as_answer_list(answers, "vqa_accuracy")]
    pred = _vqa_clean_whitespace(prediction)
    if len(set(answers)) > 1:
        answers = [_vqa_digits_articles(_vqa_punctuation(a)) for a in answers]
        pred = _vqa_digits_articles(_vqa_punctuation(pred))
    if len(answers) == 1:
        return float(pred == answers[0])
    matches = sum(a == pred for a in answers)
    # Summed in answer order, as the official script does, so results agree to the last bit.
    return sum(min(1, (matches - (a == pred)) / 3) for a in answers) / len(answers)


# ---------------------------------------------------------------------------------------------
# Caption tokenization (pycocoevalcap's PTBTokenizer without Java)

# Stanford's lexer writes brackets as PTB escapes; with -lowerCase they come out lowercased, so
# pycocoevalcap's upper-case "-LRB-"-style entries never match and these tokens stay in captions.
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-",
                 "}": "-rcb-"}
# Tokens pycocoevalcap drops after tokenizing ("--" and "..." are skipped by the regex); quote
# characters are here because the lexer turns them into `` '' ` ' which are on its list.
_PTB_DROPPED = frozenset({'"', "'", "`", ".", "?", "!", ",", ":", ";", "-"})
# Abbreviations (beyond single letters like "u.s.") that keep their period.
_PTB_ABBREVIATIONS = ("mr|mrs|ms|dr|st|jr|sr|prof|gen|sgt|capt|lt|col|dept|univ|bros|ave|blvd|rd|"
                      "mt|ft|co|inc|ltd|corp|vs|etc|jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec")
# Words the lexer splits in two, like PTB does for "cannot" -> "can not".
_PTB_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                    "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me"),
                    "y'all": ("y'", "all")}
_PTB_NEGATION = re.compile(r"(?i)^(.+)(n't)$")
_CLITIC = r"'(?:s|m|d|re|ve|ll)(?![^\W_])"
_PTB_TOKEN = re.compile(r"""
    (?P<skip>\.{3,}|-{2,})                             # ellipsis, dash (both dropped)
  | \d+(?::\d+)+(?=[ap]m\b)                            # 3:45pm -> 3:45 pm
  | (?:[^\W\d_]\.)+(?![^\W_])                          # a. u.s. e.g. a.m.
  | (?:""" + _PTB_ABBREVIATIONS + r""")\.(?![^\W_])    # mr. st. etc.
  | no\.(?=\s*\d)                                      # no. 5
  | """ + _CLITIC + r"""                             # man's it's-a 1990's -> 's
  | (?<!\S)'(?:\d+s?(?![^\W_])|t(?=(?:is|was)\b))      # '90s, 'tis -> 't is
  | [^\W_]+(?:                                         # a word, with internal
        (?:[-./_@]                                     #   hyphens, dots, slashes: hot-dog 2.5
         | (?<=\d)[,:](?=\d)                           #   1,000 3:45
         | (?<=[^\W\d_])'(?=[^\W\d_])(?!""" + _CLITIC[1:] + r""")  # don't o'clock
         | (?-i:(?<=[A-Z])&(?=[A-Z]))                  #   AT&T (but at&t -> at & t)
        )[^\W_]+)*
  | [!?]{2,}                                           # "!!!" "?!" are kept by pycocoevalcap
  | \S
""", re.VERBOSE | re.IGNORECASE)
_PTB_UNICODE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u201c": '"',
                              "\u201d": '"', "\u2013": "--", "\u2014": "--"})


def _ptb_split(token: str) -> Iterable[str]:
    lowered = token.lower()
    if lowered in _PTB_SPLIT_WORDS:
        return _PTB_SPLIT_WORDS[lowered]
    if lowered in _PTB_BRACKETS:
        return (_PTB_BRACKETS[lowered],)
    negation = _PTB_NEGATION.match(lowered)
    return negation.groups() if negation else (lowered,)


def ptb_tokenize(text: str) -> str:
    """Tokenize a caption the way pycocoevalcap's PTBTokenizer does, as space-separated tokens.

    pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (-preserveLines -lowerCase) and then
    drops the tokens on its PUNCTUATIONS list. This reproduces that for caption-like text:
    lowercasing; splitting off . , ; : ! ? quotes and brackets; splitting clitics ("man's" ->
    "man 's", "don't" -> "do n't", "can't" -> "ca n't", "cannot" -> "can not"); keeping hyphenated
    words, numbers like "1,000" "2.5" "3:45", slashes ("and/or"), and abbreviations with their
    period ("u.s.", "mr.", "st."); "$", "%", "#", "&", "*" as tokens of their own; "--", "...",
    quotes, and lone . , ; : ! ? dropped. As in pycocoevalcap, "(" becomes "-lrb-" and is NOT
    dropped (its list has the upper-case escapes only), and "!!!" or "?!" survive.

    Not reproduced (rare in captions): CoreNLP's full abbreviation and acronym lists (only
    single letters, "no." before a number and the short list in `_PTB_ABBREVIATIONS`), its
    case-sensitive rules other than "AT&T"-style acronyms, "rock'n'roll"-style words, "@handles",
    emoticons, URLs and e-mail addresses beyond dots and "@" between letters, SGML, and Unicode
    normalisation beyond curly quotes and en/em dashes.
    """
    tokens = []
    for match in _PTB_TOKEN.finditer(text.translate(_PTB_UNICODE)):
        if match.lastgroup != "skip":
            tokens.extend(t for t in _ptb_split(match.group()) if t not in _PTB_DROPPED)
    return " ".join(tokens)


# ---------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap cider/cider_scorer.py)

_CIDER_MAX_N = 4
_CIDER_SIGMA = 6.0


def _ngram_counts(sentence: str) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + n]) for n in range(1, _CIDER_MAX_N + 1)
                   for i in range(len(words) - n + 1))


def _check_ids(predictions: Mapping, references: Mapping) -> None:
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) with references but no prediction "
                         f"(first: {missing[:5]!r})")
        if extra:
            parts.append(f"{len(extra)} id(s) with a prediction but no references "
                         f"(first: {extra[:5]!r})")
        raise ValueError(
            "cider_d needs the same ids in predictions and references: " + "; ".join(parts)
            + ". Score exactly the examples you generated for: drop or add ids so both match.")
    if not references:
        raise ValueError("cider_d got no examples to score.")
    for key, refs in references.items():
        if not isinstance(predictions[key], str):
            raise TypeError(f"predictions[{key!r}] must be one caption string, not "
                            f"{type(predictions[key]).__name__} (pycocoevalcap's [caption] lists: "
                            "pass the caption itself).")
        if isinstance(refs, str):
            raise TypeError(f"references[{key!r}] is a string; pass a list of reference captions.")
        if len(refs) == 0:
            raise ValueError(
                f"references[{key!r}] is empty; every id needs at least one reference caption "
                "(drop the id from both predictions and references).")


def cider_d(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
            *, tokenize: bool = True) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D of generated captions, as pycocoevalcap's `Cider` computes it (its "CIDEr").

    Returns (corpus score, {id: score}); the corpus score is the mean of the per-id scores.
    With `tokenize` the captions first go through `ptb_tokenize` (as pycocoevalcap's pipeline
    does); without it they are taken as already tokenized and split on whitespace.

    For n = 1..4, each caption is a vector of n-gram tf-idf weights, count * (log(N) -
    log(max(1, df))), where N is the number of ids and df the number of ids whose references
    contain the n-gram. So scores depend on the whole evaluated corpus, like the reference:
    compare numbers computed over the same id set only. A candidate is compared with each
    reference by sum(min(w_cand, w_ref) * w_ref) / (|cand| |ref|) (clipping keeps repeated words
    from paying off), times exp(-d^2 / 72) with d the length difference; these are averaged over
    references and n, and multiplied by 10.

    Edge cases match the reference too: a similarity is left undivided (it is 0) where either
    vector has zero norm, e.g. for an empty caption or a one-id corpus (where log(N) = 0).
    """
    _check_ids(predictions, references)
    prepare = ptb_tokenize if tokenize else (lambda s: s)
    ids = list(references)
    cand_counts = {k: _ngram_counts(prepare(predictions[k])) for k in ids}
    ref_counts = {k: [_ngram_counts(prepare(r)) for r in references[k]] for k in ids}

    document_frequency: Counter = Counter()
    for refs in ref_counts.values():
        document_frequency.update(set().union(*refs))
    log_n = math.log(len(ids))

    def weights(counts: Counter) -> tuple[list[dict], list[float], int]:
        vectors: list[dict] = [{} for _ in range(_CIDER_MAX_N)]
        for gram, count in counts.items():
            vectors[len(gram) - 1][gram] = count * (
                log_n - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vectors]
        # The reference measures length in bigrams (words - 1): the same length differences
        # wherever both captions are non-empty, and with an empty one the similarity is 0 anyway.
        length = sum(count for gram, count in counts.items() if len(gram) == 1)
        return vectors, norms, length

    per_example = {}
    for k in ids:
        cand, cand_norms, cand_len = weights(cand_counts[k])
        total = [0.0] * _CIDER_MAX_N
        for ref_count in ref_counts[k]:
            ref, ref_norms, ref_len = weights(ref_count)
            penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * _CIDER_SIGMA ** 2))
            for n in range(_CIDER_MAX_N):
                sim = sum(min(w, ref[n].get(g, 0.0)) * ref[n].get(g, 0.0)
                          for g, w in cand[n].items())
                if cand_norms[n] and ref_norms[n]:
                    sim /= cand_norms[n] * ref_norms[n]
                total[n] += sim * penalty
        per_example[k] = sum(total) / _CIDER_MAX_N / len(ref_counts[k]) * 10.0
    return mean(per_example), per_example


# ---------------------------------------------------------------------------------------------
# Registry: one corpus metric, one function, one name

CorpusMetric = Callable[[list[str], list[list[str]]], float]
_REGISTRY: dict[str, CorpusMetric] = {}


def register(name: str) -> Callable[[CorpusMetric], CorpusMetric]:
    """Decorator registering `fn(predictions, references) -> float` as the corpus metric `name`.

    The function gets the whole split at once (so corpus-level scores such as CIDEr-D and corpus
    CER fit) after `compute` has checked it: one prediction per reference list, every list
    non-empty. Registering a taken name raises ValueError, so a copy-pasted or mistyped
    registration cannot silently replace a metric; `unregister` the old one first on purpose.
    The function itself is returned unchanged.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"metric names are non-empty strings, not {name!r}.")

    def decorator(fn: CorpusMetric) -> CorpusMetric:
        if name in _REGISTRY:
            raise ValueError(
                f"metric {name!r} is already registered (by {_describe(_REGISTRY[name])}); "
                "pick another name, or unregister() the old metric first to replace it.")
        if not callable(fn):
            raise TypeError(f"register({name!r}) got {fn!r}, which is not callable.")
        _REGISTRY[name] = fn
        return fn

    return decorator


def unregister(name: str) -> CorpusMetric:
    """Remove metric `name` and return its function; for replacing a metric on purpose, and
    for tests that register scratch metrics."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY.pop(name)


def registered() -> list[str]:
    """The registered metric names, sorted: what `compute` accepts."""
    return sorted(_REGISTRY)


def _describe(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _unknown(name: object) -> ValueError:
    names = registered()
    close = difflib.get_close_matches(name, names, n=1) if isinstance(name, str) else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown metric {name!r}.{hint} Registered metrics: {', '.join(names)}.")


def _check_names(names: str | Sequence[str]) -> list[str]:
    # A bare string is one name, not one name per character.
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in _REGISTRY:
            raise _unknown(name)
    return names


def _check_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists.")
    bare = [i for i, r in enumerate(references) if isinstance(r, str)]
    if bare:
        # "cer" would otherwise score against the first character of the string.
        raise TypeError(f"references of examples {bare[:5]} are strings; give each example a "
                        "list of reference strings ([answer], not answer).")
    missing = [i for i, r in enumerate(references) if not r]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no references; every evaluated example "
                         "needs at least one.")


def compute(names: str | Sequence[str], predictions: Sequence[str],
            references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{name: score} of the named registered metrics over aligned predictions and references.

    Checks everything before scoring anything, so a mistyped last name fails at once instead of
    after a slow metric: every name must be registered (the error lists them and suggests the
    closest), there must be one reference list per prediction, and each must be a non-empty list.
    """
    names = _check_names(names)
    _check_corpus(predictions, references)
    predictions, references = list(predictions), [list(r) for r in references]
    return {name: float(_REGISTRY[name](predictions, references)) for name in names}


def compute_by_group(names: str | Sequence[str], predictions: Sequence[str],
                     references: Sequence[Sequence[str]],
                     groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """{group: {name: score}}: `compute` on each group's examples alone (e.g. per question family).

    `groups[i]` names the group of example i. Groups appear in order of first occurrence, and
    only groups with examples appear. Corpus-level metrics are computed within the group:
    CIDEr-D's idf comes from the group's references (a one-example group scores 0), and CER
    weighs by the group's characters, so group scores need not average to the overall score.
    """
    names = _check_names(names)
    _check_corpus(predictions, references)
    if len(groups) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(groups)} group labels; give "
                         "one group per example, in the same order.")
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    return {group: compute(names, [predictions[i] for i in rows], [references[i] for i in rows])
            for group, rows in members.items()}


@register("exact_match")
def _exact_match_corpus(predictions: list[str], references: list[list[str]]) -> float:
    """Mean `exact_match`."""
    return mean(exact_match(p, r) for p, r in zip(predictions, references))


@register("vqa_accuracy")
def _vqa_accuracy_corpus(predictions: list[str], references: list[list[str]]) -> float:
    """Mean `vqa_accuracy`, the VQAv2 number."""
    return mean(vqa_accuracy(p, r) for p, r in zip(predictions, references))


@register("anls")
def _anls_corpus(predictions: list[str], references: list[list[str]]) -> float:
    """Mean `anls`, the ST-VQA / DocVQA number."""
    return mean(anls(p, r) for p, r in zip(predictions, references))


@register("cer")
def _cer_corpus(predictions: list[str], references: list[list[str]]) -> float:
    """`corpus_character_error_rate` against each example's first reference (OCR tasks have one)."""
    return corpus_character_error_rate(predictions, [r[0] for r in references])


@register("cider_d")
def _cider_d_corpus(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus `cider_d` with examples as ids, so its idf comes from exactly these references."""
    return cider_d(dict(enumerate(predictions)), dict(enumerate(references)))[0]
