"""pipeline/metrics.py: the wrappers agree with rouge-score and sacrebleu on their documented examples, the
normalisers do what they say, and rank accuracy picks the best-scored choice."""

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from pipeline.errors import UserError
from pipeline.metrics import (
    METRICS,
    NORMALIZERS,
    bleu,
    compute_metrics,
    corpus_bleu,
    exact_match,
    rank_classification,
    rouge,
    split_sentences,
)

# rouge-score's README example (google-research/google-research, rouge/README.md): score(target, prediction).
README_TARGET = "The quick brown fox jumps over the lazy dog"
README_PREDICTION = "The quick brown dog jumps on the log."

# sacrebleu's README example ("Using SacreBLEU from Python"): two reference streams, documented
# `BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)` and `nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|...`.
BLEU_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
BLEU_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


# ROUGE

def test_rouge_equals_rouge_score_on_its_readme_example():
    expected = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True).score(
        README_TARGET, README_PREDICTION)
    ours = rouge([README_PREDICTION], [README_TARGET])
    assert set(ours) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    for kind, score in expected.items():
        assert ours[kind] == pytest.approx(100 * score.fmeasure)
    # By hand (stemmed): 6 of the prediction's 8 unigrams match the target's 9; the LCS is 5 long.
    assert ours["rouge1"] == pytest.approx(100 * 2 * (6 / 8) * (6 / 9) / (6 / 8 + 6 / 9))
    assert ours["rougeL"] == pytest.approx(100 * 2 * (5 / 8) * (5 / 9) / (5 / 8 + 5 / 9))


def test_rouge_lsum_splits_sentences_like_rouge_scores_own_test():
    # rouge_scorer_test.testRougeLSumSentenceSplitting: swapped sentences are a perfect rougeLsum once
    # split into lines, and 0.5 as one sentence (which is what rougeL sees).
    ours = rouge(["Second sentence. First Sentence."], ["First sentence. Second Sentence."])
    assert ours["rougeLsum"] == pytest.approx(100.0)
    assert ours["rougeL"] == pytest.approx(50.0)


def test_rouge_lsum_equals_rouge_score_given_newline_separated_sentences():
    prediction = "The cat sat on the mat. It was happy! Then it slept."
    target = "A cat was sitting on a mat.\nThe cat slept. Was it happy?"
    assert split_sentences(prediction) == "The cat sat on the mat.\nIt was happy!\nThen it slept."
    assert split_sentences(target) == "A cat was sitting on a mat.\nThe cat slept.\nWas it happy?"
    expected = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True).score(
        "A cat was sitting on a mat.\nThe cat slept.\nWas it happy?",
        "The cat sat on the mat.\nIt was happy!\nThen it slept.")
    assert rouge([prediction], [target])["rougeLsum"] == pytest.approx(100 * expected["rougeLsum"].fmeasure)


def test_rouge_aggregates_the_mean_of_per_example_f_measures():
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    pairs = [(README_PREDICTION, README_TARGET), ("testing", "testing one two"), ("", "anything")]
    mean = sum(scorer.score(t, p)["rouge1"].fmeasure for p, t in pairs) / len(pairs)
    assert rouge([p for p, _ in pairs], [t for _, t in pairs])["rouge1"] == pytest.approx(100 * mean)


# BLEU

def test_bleu_equals_sacrebleu_on_its_readme_example():
    score, signature = corpus_bleu(BLEU_SYS, [list(refs) for refs in zip(*BLEU_REFS, strict=True)])
    assert score == pytest.approx(sacrebleu.corpus_bleu(BLEU_SYS, BLEU_REFS).score)
    assert round(score, 2) == 48.53  # the value the README prints
    assert signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_bleu_with_one_reference_per_prediction_records_its_signature():
    expected = sacrebleu.corpus_bleu(BLEU_SYS, [BLEU_REFS[0]])
    assert bleu(BLEU_SYS, BLEU_REFS[0]) == {"bleu": pytest.approx(expected.score)}
    _, signature = corpus_bleu(BLEU_SYS, BLEU_REFS[0])
    assert "nrefs:1" in signature and "tok:13a" in signature


# Exact match, accuracy, normalisers

@pytest.mark.parametrize(("normalize", "prediction", "target", "match"), [
    ("none", "Paris", "Paris", True),
    ("none", " Paris", "Paris", False),
    ("strip", " Paris\n", "Paris", True),
    ("strip", "paris", "Paris", False),
    ("lower", " PARIS ", "Paris", True),
    ("lower", "Paris.", "Paris", False),
    ("squad", "The  Eiffel Tower!", "eiffel tower", True),
    ("squad", "an apple, a day", "apple day", True),
    ("squad", "theatre", "atre", False),  # articles only as whole words
    ("squad", "Paris", "London", False),
    ("number", "5,445", "5445", True),
    ("number", "5445.0", "5445", True),
    ("number", " 2.50 ", "2.5", True),
    ("number", "-0", "0", True),
    ("number", "5400", "5.4e3", True),
    ("number", "5445", "5446", False),
    ("number", "The answer.", "answer", True),  # not a number: as squad
    ("number", "nan", "NaN", True),  # compared as text, not as float('nan')
])
def test_exact_match_per_normaliser(normalize, prediction, target, match):
    assert exact_match([prediction], [target], normalize=normalize) == {"exact_match": 100.0 * match}


def test_accuracy_is_a_percentage_under_the_default_squad_normaliser():
    predictions = ["Yes", "no.", "maybe", "The positive"]
    targets = ["yes", "No", "no", "positive"]
    assert METRICS["accuracy"](predictions, targets) == {"accuracy": 75.0}
    assert METRICS["accuracy"](predictions, targets, normalize="none") == {"accuracy": 0.0}


def test_normalisers_and_metrics_fail_clearly():
    assert set(NORMALIZERS) == {"none", "strip", "lower", "squad", "number"}
    with pytest.raises(UserError, match="valid: none, strip, lower, squad, number"):
        exact_match(["a"], ["a"], normalize="lowercase")
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(UserError, match="unknown metric 'f1'; valid: accuracy"):
        compute_metrics(["f1"], ["a"], ["a"])
    assert math.isnan(exact_match([], [])["exact_match"])


def test_compute_metrics_runs_the_generation_metrics_and_skips_rank_classification():
    scores = compute_metrics(["rouge", "bleu", "exact_match", "accuracy", "rank_classification"],
                             BLEU_SYS, BLEU_REFS[0], normalize="squad")
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match", "accuracy"}
    assert all(isinstance(value, float) and 0.0 <= value <= 100.0 for value in scores.values())
    assert scores["exact_match"] == pytest.approx(100 / 3)


# Rank classification (the scores come from pipeline.evaluate.scoring: test_scoring.py)

def test_rank_classification_accuracy_picks_the_best_choice():
    scores = [[-1.0, -2.0], [-3.0, -0.5, -9.0], [-4.0, -4.0]]  # a tie goes to the first choice
    assert rank_classification(scores, [0, 1, 0]) == {"rank_accuracy": 100.0}
    assert rank_classification(scores, [1, 1, 1]) == {"rank_accuracy": pytest.approx(100 / 3)}
