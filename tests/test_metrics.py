"""Metrics against hand-worked values and against the reference implementations' own outputs."""

import pytest

from litlab.metrics import (
    anls,
    character_error_rate,
    cider_d,
    compute,
    compute_by_group,
    corpus_character_error_rate,
    exact_match,
    levenshtein,
    mean,
    ptb_tokenize,
    register,
    registered,
    unregister,
    vqa_accuracy,
)

# ---------------------------------------------------------------------------------------------
# exact_match, mean


@pytest.mark.parametrize("prediction, targets, expected", [
    ("golden retriever", "golden retriever", 1.0),
    ("  Golden   Retriever\n", ["tabby cat", "golden retriever"], 1.0),  # case + whitespace
    ("golden retriever", ["tabby cat"], 0.0),
    ("cat.", "cat", 0.0),  # punctuation is not normalised
    ("cats", ["cat"], 0.0),
    ("", [""], 1.0),
])
def test_exact_match(prediction, targets, expected):
    assert exact_match(prediction, targets) == expected


def test_exact_match_needs_a_target():
    with pytest.raises(ValueError, match="at least one"):
        exact_match("cat", [])


def test_mean_of_list_and_mapping_and_empty():
    assert mean([1.0, 0.0, 0.5]) == 0.5
    assert mean({"a": 1.0, "b": 0.0}) == 0.5
    with pytest.raises(ValueError, match="no scores"):
        mean({})


# ---------------------------------------------------------------------------------------------
# Levenshtein, ANLS, CER


@pytest.mark.parametrize("a, b, distance", [
    ("", "", 0), ("abc", "", 3), ("", "abc", 3), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("same", "same", 0), ("ab", "ba", 2),
])
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_anls():
    assert anls("Stop", ["stop "]) == 1.0  # lowercased and stripped
    # "stqp" vs "stop": 1 edit / 4 chars -> NL 0.25 -> 0.75.
    assert anls("stqp", ["stop"]) == pytest.approx(0.75)
    # Best over answers: "1999" vs "1998" is NL 0.25 (0.75), vs "nineteen" NL 1 (0).
    assert anls("1999", ["nineteen", "1998"]) == pytest.approx(0.75)
    # "abcd" vs "abxy": NL = 2/4 = 0.5, not < 0.5 -> 0; "abc" vs "abx": NL 1/3 -> 2/3.
    assert anls("abcd", ["abxy"]) == 0.0
    assert anls("abc", ["abx"]) == pytest.approx(2 / 3)
    # A looser threshold admits the near-miss: 1 - 0.5.
    assert anls("abcd", ["abxy"], threshold=0.6) == pytest.approx(0.5)
    # NL uses the longer string: "ab" vs "abcdef" is 4/6 -> 0; "" vs "" is a perfect match.
    assert anls("ab", ["abcdef"]) == 0.0
    assert anls("", [""]) == 1.0
    assert anls("x", "x") == 1.0  # a bare string is one answer
    with pytest.raises(ValueError):
        anls("x", [])


def test_anls_collapses_whitespace_like_docvqa():
    # DocVQA's evaluation joins on single spaces after lowercasing, so spacing is not an edit.
    assert anls("the cat sat", ["The  cat sat"]) == 1.0
    assert anls(" the\tcat\n\nsat ", ["THE CAT SAT"]) == 1.0
    # Collapsed, not removed: a missing space is still one edit, 1/7 -> 6/7.
    assert anls("thecat", ["the  cat"]) == pytest.approx(6 / 7)


def test_character_error_rate():
    assert character_error_rate("hello", "hello") == 0.0
    assert character_error_rate("helo", "hello") == pytest.approx(1 / 5)
    assert character_error_rate("Hello", "hello") == pytest.approx(1 / 5)  # case counts
    assert character_error_rate("hello world", "hi") == pytest.approx(10 / 2)  # can exceed 1
    assert character_error_rate("ab", "") == 2.0  # empty target counts as length 1


def test_corpus_character_error_rate_weighs_by_length():
    predictions, targets = ["helo", "a"], ["hello", "b"]
    # (1 + 1) edits over (5 + 1) characters, not the mean of 1/5 and 1/1.
    assert corpus_character_error_rate(predictions, targets) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        corpus_character_error_rate(predictions, targets[:1])
    with pytest.raises(ValueError, match="no examples"):
        corpus_character_error_rate([], [])


# ---------------------------------------------------------------------------------------------
# VQAv2 accuracy. Every value below was also checked against the official vqaEval.py
# (GT-Vision-Lab/VQA a013f00) run on the same answers.


@pytest.mark.parametrize("matching, expected", [
    # Leave each of the 10 answers out; the other 9 hold `m` matches if a non-matching answer
    # was left out, m - 1 if a matching one was; each subset scores min(1, matches / 3).
    (0, 0.0),
    (1, 0.3),  # 1 subset with 0 matches -> 0, 9 with 1 -> 1/3: 9/3 / 10
    (2, 0.6),  # 2 with 1 -> 1/3, 8 with 2 -> 2/3: (2/3 + 16/3) / 10 = 18/30
    (3, 0.9),  # 3 with 2 -> 2/3, 7 with 3 -> 1: (2 + 7) / 10
    (4, 1.0),  # 4 with 3 -> 1, 6 with 4 -> 1
    (10, 1.0),
])
def test_vqa_leave_one_out(matching, expected):
    answers = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, answers, expected", [
    # Number words become digits, on both sides.
    ("two", ["2"] * 9 + ["3"], 1.0),
    ("2", ["two"] * 3 + ["2"] * 7, 1.0),
    ("none", ["0"] * 2 + ["zero"] * 8, 1.0),
    # Trailing period and "!" go; "2.5" keeps its decimal point.
    ("yes.", ["yes"] * 9 + ["no"], 1.0),
    ("yes!", ["yes"] * 5 + ["no"] * 5, 1.0),
    ("2.5", ["2.5"] * 4 + ["3"] * 6, 1.0),
    # Contractions are restored: "dont" -> "don't" (and "don't" stays).
    ("dont", ["don't"] * 5 + ["no"] * 5, 1.0),
    ("don't", ["dont"] * 5 + ["no"] * 5, 1.0),
    # Articles are dropped.
    ("a cat", ["cat"] * 4 + ["dog"] * 6, 1.0),
    # A digit-comma-digit makes every punctuation mark vanish: "1,000" -> "1000".
    ("1,000", ["1000"] * 3 + ["1,000"] * 2 + ["many"] * 5, 1.0),
    # A hyphen inside a word becomes a space: "hot-dog" == "hot dog" (3 of 10 -> 0.9).
    ("hot-dog", ["hot dog"] * 3 + ["hotdog"] * 7, 0.9),
    # A comma next to a space is deleted: "red, white" == "red white" (2 of 10 -> 0.6).
    ("red, white", ["red white"] * 2 + ["red"] * 8, 0.6),
    ("left (side)", ["left side"] * 5 + ["left"] * 5, 1.0),
    # Case is folded once normalisation runs.
    ("Yes", ["yes"] * 9 + ["yeah"], 1.0),
    # The official table's own quirk: "somebody'd" maps to "somebodyd" (3 of 10 -> 0.9).
    ("somebody'd", ["somebodyd"] * 3 + ["x"] * 7, 0.9),
])
def test_vqa_normalisation(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction", ["yes.", "Yes", "the yes"])
def test_vqa_unanimous_answers_are_compared_raw(prediction):
    # The official script normalises only when the answers disagree: with ten identical
    # answers even "Yes" or "yes." scores 0.
    assert vqa_accuracy(prediction, ["yes"] * 10) == 0.0


def test_vqa_strips_surrounding_whitespace_always():
    assert vqa_accuracy("  yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("yes", ["yes "] * 10) == 1.0


def test_vqa_removes_at_most_32_periods_like_the_official_script():
    # The official call passes re.UNICODE (32) where re.sub takes its count.
    answers = ["hmm"] * 5 + ["no"] * 5
    assert vqa_accuracy("hmm" + "." * 32, answers) == 1.0
    assert vqa_accuracy("hmm" + "." * 33, answers) == 0.0


def test_vqa_other_answer_counts():
    # Two answers: leaving one out leaves one; 1 match of 1 scores 1/3.
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx((0 + 1 / 3) / 2)
    # Five answers, all matching: each subset of 4 has 4 matches.
    assert vqa_accuracy("cat", ["cat"] * 5) == 1.0
    # One answer: exact comparison after whitespace stripping.
    assert vqa_accuracy(" cat", ["cat"]) == 1.0
    assert vqa_accuracy("Cat", ["cat"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])


# ---------------------------------------------------------------------------------------------
# PTB tokenization. Expected strings are what pycocoevalcap's PTBTokenizer produced for the
# same lines: Stanford CoreNLP 3.4.1 (the jar pycocoevalcap 1.2 ships) run with
# -preserveLines -lowerCase, then pycocoevalcap's PUNCTUATIONS removed.


@pytest.mark.parametrize("line, tokens", [
    ("A man's riding a horse.", "a man 's riding a horse"),
    ("Two dogs don't play (in the park)!", "two dogs do n't play -lrb- in the park -rrb-"),
    ('"The cat," she said, "is on the mat."', "the cat she said is on the mat"),
    ("A hot-dog stand on 5th St. with U.S. flags.", "a hot-dog stand on 5th st. with u.s. flags"),
    ("It costs $5.50 and/or 1,000 yen -- really...", "it costs $ 5.50 and/or 1,000 yen really"),
    ("A [red] {blue} car; it's I'm you'll we've they'd.",
     "a -lsb- red -rsb- -lcb- blue -rcb- car it 's i 'm you 'll we 've they 'd"),
    ("They cannot go. Gonna wanna gotta.", "they can not go gon na wan na got ta"),
    ("wow!!! really?! no.. ok.... a. e.g. i.e. etc. fine",
     "wow !!! really ?! no ok a. e.g. i.e. etc. fine"),
    ("a man \u2019s hat \u2018quoted\u2019 \u201cdouble\u201d don\u2019t \u2014 dash \u2013 en",
     "a man 's hat quoted double do n't dash en"),
    ("a 1950's-style diner in the '90s", "a 1950 's style diner in the '90s"),
    ("CAN'T STOP WON'T STOP", "ca n't stop wo n't stop"),
    ("at 5:30pm it's. dogs'. don't. can't.", "at 5:30 pm it 's dogs do n't ca n't"),
    ("No. 24 and no.47 and Mr. Smith's dog", "no. 24 and no. 47 and mr. smith 's dog"),
    ("at&t and AT&T & co.", "at & t and at&t & co."),
    ("it's-a me and he's-got a 10-year-old x-ray",
     "it 's a me and he 's got a 10-year-old x-ray"),
    ('A sign reads: "Sale: 50% off #1 items*"', "a sign reads sale 50 % off # 1 items *"),
    (" A  man   with  extra   spaces .", "a man with extra spaces"),
    ("", ""),
])
def test_ptb_tokenize_matches_stanford_output(line, tokens):
    assert ptb_tokenize(line) == tokens


# ---------------------------------------------------------------------------------------------
# CIDEr-D. The golden numbers are the output of pycocoevalcap's Cider (cider/cider.py and
# cider/cider_scorer.py of github.com/salaniz/pycocoevalcap at commit
# ad63453cfab57a81a02b2949b17a91fab1c3df77, identical to the PyPI release 1.2) on exactly these
# captions, already tokenized, with gts = references and res = {id: [prediction]}.

CIDER_CASES = {
    # repeated n-grams, a candidate much longer than its references, a one-word candidate,
    # an empty candidate, and 3 / 2 / 4 / 2 / 2 references per id.
    "mixed": (
        {"horse": "a man riding a horse on a beach",
         "dog": "a dog a dog a dog playing with a ball",
         "long": "a very long candidate caption describing a cat sitting on a wooden table next "
                 "to a window with many extra words",
         "oneword": "cat",
         "empty": ""},
        {"horse": ["a man rides a horse on the beach",
                   "a person riding a brown horse along the shore",
                   "a man on a horse at the beach"],
         "dog": ["a dog playing with a red ball", "a small dog chases a ball in the grass"],
         "long": ["a cat on a table", "a cat sitting on a table", "cat near window",
                  "a grey cat sits on the wooden table"],
         "oneword": ["a cat", "the cat sleeps on the sofa"],
         "empty": ["a plate of food", "food on a plate"]},
        1.2713036520240504,
        {"horse": 2.5364513711568266, "dog": 2.1973023082012673, "long": 0.06675250144899061,
         "oneword": 1.5560120793131673, "empty": 0.0},
    ),
    # A candidate identical to one of its references, in a two-image corpus (idf = log 2).
    "pair": (
        {1: "two zebras grazing in a field", 2: "a red bus on the street"},
        {1: ["two zebras grazing in a field", "zebras eating grass"],
         2: ["a double decker bus drives down the street", "a red bus parked on a city street",
             "the bus is red"]},
        3.674858656264731,
        {1: 5.284824650565815, 2: 2.0648926619636474},
    ),
    # Clipping: repeated candidate words earn no more than the reference's own counts.
    "clip": (
        {"a": "the the the the cat cat", "b": "a bird on a branch",
         "c": "people people walking walking"},
        {"a": ["the cat and the dog", "the cat sat on the mat with the hat"],
         "b": ["a small bird perched on a tree branch"],
         "c": ["people walking down the street", "many people walking in a park",
               "people are walking", "a crowd of people"]},
        1.3800974179172023,
        {"a": 1.101956208327268, "b": 1.9325662863203685, "c": 1.1057697591039704},
    ),
    # One image: log(N) = 0 makes every weight 0, so even a perfect caption scores 0.
    "single": ({0: "a cat on a mat"}, {0: ["a cat on a mat", "a cat sitting on a mat"]},
               0.0, {0: 0.0}),
}


@pytest.mark.parametrize("name", sorted(CIDER_CASES))
def test_cider_d_matches_pycocoevalcap(name):
    predictions, references, corpus, per_example = CIDER_CASES[name]
    score, scores = cider_d(predictions, references, tokenize=False)
    assert score == pytest.approx(corpus, abs=1e-6)
    assert score == pytest.approx(sum(scores.values()) / len(scores))
    assert scores.keys() == per_example.keys()
    for key, expected in per_example.items():
        assert scores[key] == pytest.approx(expected, abs=1e-6), key


def test_cider_d_with_tokenization_matches_pycocoevalcap_pipeline():
    # Raw captions through pycocoevalcap's PTBTokenizer (the CoreNLP 3.4.1 jar) and then Cider:
    # the goldens cover tokenization differences such as "-lrb-", "'s" and "do n't".
    predictions = {"k1": "A man's riding a horse on the beach.",
                   "k2": "Two dogs (black and white) don't play!",
                   "k3": 'A "STOP" sign, on a pole...'}
    references = {
        "k1": ["A man is riding a horse on the beach.",
               "A person rides a horse; it's on the sand."],
        "k2": ["Two dogs don't play together.",
               "Black and white dogs sit in the grass (outside)."],
        "k3": ["A red stop sign on a pole.", 'A "stop" sign near the road!', "The sign says STOP"],
    }
    score, scores = cider_d(predictions, references)
    assert score == pytest.approx(3.4587888684669914, abs=1e-6)
    expected = {"k1": 4.133793355302568, "k2": 2.415483431079643, "k3": 3.8270898190187634}
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key


def test_cider_d_perfect_captions():
    # Each candidate equals its only reference and shares no n-gram with the other ids: every
    # per-n cosine is exactly 1 and the length penalty is 1, so the score is 10.
    predictions = {1: "red bus on road", 2: "green tree in park", 3: "blue sky over sea"}
    score, scores = cider_d(predictions, {k: [v] for k, v in predictions.items()}, tokenize=False)
    assert score == pytest.approx(10.0)
    assert all(s == pytest.approx(10.0) for s in scores.values())
    # Two-word captions have no 3- or 4-grams, whose terms are then 0: (1 + 1 + 0 + 0) / 4 * 10.
    short = {1: "red bus", 2: "green tree", 3: "blue sky"}
    score, _ = cider_d(short, {k: [v] for k, v in short.items()}, tokenize=False)
    assert score == pytest.approx(5.0)


def test_cider_d_rejects_mismatched_ids():
    with pytest.raises(ValueError) as info:
        cider_d({1: "a", 2: "b", 9: "c"}, {1: ["a"], 2: ["b"], 3: ["c"], 4: ["d"]})
    message = str(info.value)
    assert "2 id(s) with references but no prediction (first: [3, 4])" in message
    assert "1 id(s) with a prediction but no references (first: [9])" in message
    assert "same ids" in message


def test_cider_d_rejects_ids_without_references():
    with pytest.raises(ValueError, match=r"references\['img7'\] is empty"):
        cider_d({"img1": "a cat", "img7": "a dog"}, {"img1": ["a cat"], "img7": []})


def test_cider_d_rejects_wrong_shapes_and_empty_corpus():
    with pytest.raises(TypeError, match="list of reference captions"):
        cider_d({1: "a cat"}, {1: "a cat"})
    with pytest.raises(TypeError, match="one caption string"):
        cider_d({1: ["a cat"]}, {1: ["a cat"]})
    with pytest.raises(ValueError, match="no examples"):
        cider_d({}, {})


# ---------------------------------------------------------------------------------------------
# Registry, compute, compute_by_group

BUILTIN_METRICS = ["anls", "cer", "cider_d", "exact_match", "vqa_accuracy"]

# Small corpus with mixed hits, a near-miss for ANLS/CER and several references per example.
PREDICTIONS = ["a red bus on the street", "two", "Stqp", "a dog in the grass", "yes"]
REFERENCES = [
    ["a red bus on the street", "a bus parked on a city street"],
    ["2", "two", "2", "2"],
    ["stop", "stop sign"],
    ["a small dog chases a ball in the grass", "a dog playing in the grass"],
    ["no"],
]


@pytest.fixture
def clean_registry():
    """Unregister whatever the test registered, so no test metric leaks into other tests."""
    before = set(registered())
    yield
    for name in set(registered()) - before:
        unregister(name)
    assert set(registered()) == before  # nor did the test remove a built-in


def test_builtin_metrics_are_registered():
    assert set(BUILTIN_METRICS) <= set(registered())
    assert registered() == sorted(registered())


def test_register_round_trip(clean_registry):
    def always_half(predictions, references):
        return 0.5

    assert "test_always_half" not in registered()
    assert register("test_always_half")(always_half) is always_half  # decorator returns fn
    assert "test_always_half" in registered()
    assert compute(["test_always_half"], ["x"], [["y"]]) == {"test_always_half": 0.5}
    assert unregister("test_always_half") is always_half
    assert "test_always_half" not in registered()
    with pytest.raises(ValueError, match="unknown metric"):
        compute(["test_always_half"], ["x"], [["y"]])


def test_registering_a_name_twice_is_an_error(clean_registry):
    with pytest.raises(ValueError, match="'anls' is already registered"):
        @register("anls")
        def anls_typo(predictions, references):
            return 0.0
    # The original metric is still the one in use.
    assert compute(["anls"], ["stop"], [["stop"]]) == {"anls": 1.0}

    register("test_once")(lambda p, r: 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register("test_once")(lambda p, r: 0.0)
    assert compute("test_once", ["x"], [["y"]]) == {"test_once": 1.0}


def test_register_rejects_bad_names():
    with pytest.raises(TypeError, match="non-empty strings"):
        register("")
    with pytest.raises(TypeError, match="non-empty strings"):
        register(None)


def test_unknown_metric_lists_registered_names_and_suggests_one():
    with pytest.raises(ValueError) as info:
        compute(["exact_match", "anl"], ["x"], [["x"]])
    message = str(info.value)
    assert message.startswith("unknown metric 'anl'. Did you mean 'anls'?")
    assert "Registered metrics: " + ", ".join(registered()) + "." in message
    with pytest.raises(ValueError) as info:
        compute(["bleu"], ["x"], [["x"]])
    assert "Did you mean" not in str(info.value)
    assert "cider_d" in str(info.value)
    with pytest.raises(ValueError, match="Did you mean 'vqa_accuracy'"):
        unregister("vqa_acuracy")


def test_unknown_metric_fails_before_any_metric_runs(clean_registry):
    calls = []
    register("test_counting")(lambda p, r: calls.append(1) or 0.0)
    with pytest.raises(ValueError, match="unknown metric 'cidr_d'"):
        compute(["test_counting", "cidr_d"], ["x"], [["x"]])
    assert calls == []


def test_compute_matches_the_per_example_functions():
    scores = compute(BUILTIN_METRICS, PREDICTIONS, REFERENCES)
    assert list(scores) == BUILTIN_METRICS
    pairs = list(zip(PREDICTIONS, REFERENCES))
    assert scores["exact_match"] == pytest.approx(mean(exact_match(p, r) for p, r in pairs))
    assert scores["vqa_accuracy"] == pytest.approx(mean(vqa_accuracy(p, r) for p, r in pairs))
    assert scores["anls"] == pytest.approx(mean(anls(p, r) for p, r in pairs))
    assert scores["cer"] == pytest.approx(
        corpus_character_error_rate(PREDICTIONS, [r[0] for r in REFERENCES]))
    assert scores["cider_d"] == pytest.approx(
        cider_d(dict(enumerate(PREDICTIONS)), dict(enumerate(REFERENCES)))[0])
    # Hand-checked anchors, so a change in both paths at once is still caught.
    assert scores["exact_match"] == pytest.approx(2 / 5)
    # "a dog in the grass" vs "a dog playing in the grass": 8 edits / 26 chars.
    assert scores["anls"] == pytest.approx((1 + 1 + 0.75 + (1 - 8 / 26) + 0) / 5)
    assert all(isinstance(v, float) for v in scores.values())
    assert compute("cer", PREDICTIONS, REFERENCES) == {"cer": scores["cer"]}  # bare name


def test_compute_checks_the_corpus_like_evaluate():
    with pytest.raises(ValueError, match=r"^2 predictions but 1 reference lists\.$"):
        compute(["exact_match"], ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"examples \[1, 3\] have no references; every evaluated "
                                         r"example needs at least one\."):
        compute(["exact_match"], ["a", "b", "c", "d"], [["a"], [], ["c"], []])
    with pytest.raises(TypeError, match=r"examples \[0\] are strings"):
        compute(["cer"], ["hello"], ["hello"])


def test_compute_by_group_scores_each_subset():
    groups = ["caption", "count", "ocr", "caption", "yes/no"]
    by_group = compute_by_group(["exact_match", "anls", "cer"], PREDICTIONS, REFERENCES, groups)
    assert list(by_group) == ["caption", "count", "ocr", "yes/no"]  # first-occurrence order
    for group, scores in by_group.items():
        rows = [i for i, g in enumerate(groups) if g == group]
        assert scores == compute(["exact_match", "anls", "cer"], [PREDICTIONS[i] for i in rows],
                                 [REFERENCES[i] for i in rows])
    assert by_group["caption"]["exact_match"] == 0.5
    assert by_group["count"]["exact_match"] == 1.0
    assert by_group["ocr"]["anls"] == pytest.approx(0.75)
    assert by_group["yes/no"] == {"exact_match": 0.0, "anls": 0.0, "cer": pytest.approx(3 / 2)}
    # One group is the whole corpus.
    assert compute_by_group(["cider_d"], PREDICTIONS, REFERENCES, ["all"] * 5) == {
        "all": compute(["cider_d"], PREDICTIONS, REFERENCES)}


def test_compute_by_group_checks_its_inputs():
    with pytest.raises(ValueError, match="5 predictions but 4 group labels"):
        compute_by_group(["anls"], PREDICTIONS, REFERENCES, ["a"] * 4)
    with pytest.raises(ValueError, match="Did you mean 'anls'"):
        compute_by_group(["ansl"], PREDICTIONS, REFERENCES, ["a"] * 5)
    # Indices in the error are the corpus's, not the group's.
    with pytest.raises(ValueError, match=r"examples \[2\] have no references"):
        compute_by_group(["anls"], ["a", "b", "c"], [["a"], ["b"], []], ["x", "y", "y"])
    assert compute_by_group(["anls"], [], [], []) == {}


def test_custom_metric_works_through_compute(clean_registry):
    @register("test_length_ratio")
    def length_ratio(predictions, references):
        """Corpus-level: total prediction characters over total first-reference characters."""
        return sum(map(len, predictions)) / sum(len(r[0]) for r in references)

    scores = compute(["exact_match", "test_length_ratio"], ["ab", "cdef"], [["ab"], ["cd"]])
    assert scores == {"exact_match": 0.5, "test_length_ratio": pytest.approx(6 / 4)}
    by_group = compute_by_group(["test_length_ratio"], ["ab", "cdef"], [["ab"], ["cd"]], ["g", "h"])
    assert by_group == {"g": {"test_length_ratio": 1.0}, "h": {"test_length_ratio": 2.0}}
