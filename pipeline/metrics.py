"""Metrics: thin wrappers over rouge-score and sacrebleu, exact match and accuracy under a named
normaliser, and rank classification over answer choices. `METRICS` maps the names a task.yaml declares
(`metrics: [...]`) to these functions. Torch-free: scoring answer choices with a model is
`pipeline.evaluate.scoring`; this module only turns those scores into an accuracy.

    scores = compute_metrics(["rouge", "exact_match"], predictions, targets, normalize="squad")
    # {"rouge1": ..., "rouge2": ..., "rougeL": ..., "rougeLsum": ..., "exact_match": ...}
    rank_classification(choice_scores, gold_indices)    # {"rank_accuracy": ...}

Every score is on a 0..100 scale (as sacrebleu and the T5/FLAN papers report), higher is better, and is a
plain float: a task's results are JSON and can be subtracted (tuned minus base).

| task.yaml name        | output keys                           | what                                           |
|-----------------------|---------------------------------------|------------------------------------------------|
| `rouge`               | rouge1, rouge2, rougeL, rougeLsum     | rouge-score, Porter stemming, mean F-measure    |
| `bleu`                | bleu                                  | sacrebleu corpus BLEU, its defaults (tok 13a)   |
| `exact_match`         | exact_match                           | % of predictions equal to their target          |
| `accuracy`            | accuracy                              | the same computation, named as classification   |
|                       |                                       | papers report it                                |
| `rank_classification` | rank_accuracy                         | % of examples whose gold choice scores highest  |

ROUGE. `rouge_scorer.RougeScorer(..., use_stemmer=True)` scores each (target, prediction) pair; a corpus
score is the mean of the per-example F-measures (rouge-score's `BootstrapAggregator` reports a bootstrap
estimate of the same mean; the exact mean is deterministic). rougeLsum treats newlines as sentence
boundaries, so both texts are first split into sentences, one per line, by a simple regex: a sentence ends
at `.`, `!` or `?` followed by whitespace, and existing line breaks are kept. This stands in for rouge-score's
`split_summaries=True`, which needs nltk's punkt data (a download); it differs from punkt on abbreviations
("Dr. Smith" is two sentences here). rouge1/2/L ignore line breaks, so the split does not change them.

BLEU. `sacrebleu.metrics.BLEU()` with its defaults: mixed case, the 13a tokenizer, exp smoothing, corpus
level. A target is one reference; `bleu()` also takes several references per prediction. The signature
(`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...`) is not a score, so it is not in the scores
dict: `corpus_bleu()` returns it beside the score.

Normalisation. Exact match and accuracy compare `NORMALIZERS[normalize](prediction)` with the same of the
target; a task chooses with `normalize:` in its task.yaml, default `squad`. ROUGE and BLEU accept the
argument (so `compute_metrics` calls every metric alike) and ignore it: their own tokenization is part of
what makes their scores comparable with published ones.
  none    the text as it is
  strip   surrounding whitespace removed
  lower   strip, then lowercase
  squad   SQuAD v1.1's normalize_answer: lowercase, drop punctuation, drop the articles a/an/the,
          collapse whitespace
  number  a text that is a number (commas as thousands separators allowed) becomes its canonical
          decimal form, so "5,445", "5445" and "5445.0" match; any other text is normalised as `squad`

Rank classification (T0's method): each choice is scored by the summed log-likelihood of its tokens given
the input (`pipeline.evaluate.scoring.rank_classification_scores`); the prediction is the best-scoring
choice, the first one on ties.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.errors import UserError

DEFAULT_NORMALIZER = "squad"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Normalisers.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # no "nan"/"inf", which float() would accept


def normalize_squad(text: str) -> str:
    """SQuAD v1.1's `normalize_answer`, in its order: lowercase, punctuation, articles, whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def normalize_number(text: str) -> str:
    """A number's canonical decimal form ("5,445" -> "5445", "2.50" -> "2.5"); other text as `squad`."""
    compact = text.strip().replace(",", "")
    if _NUMBER.fullmatch(compact):
        try:
            value = Decimal(compact)
        except InvalidOperation:
            return normalize_squad(text)
        return format(value.normalize(), "f") if value else "0"  # "f": "5400", never "5.4E+3"; "-0" is "0"
    return normalize_squad(text)


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "none": lambda text: text,
    "strip": str.strip,
    "lower": lambda text: text.strip().lower(),
    "squad": normalize_squad,
    "number": normalize_number,
}


def get_normalizer(name: str) -> Callable[[str], str]:
    if name not in NORMALIZERS:
        raise UserError(f"unknown normaliser {name!r}; valid: {', '.join(NORMALIZERS)}")
    return NORMALIZERS[name]


# Generation metrics: (predictions, references, *, normalize) -> {name: score in 0..100}.

def _check_lengths(predictions: Sequence[str], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _mean_percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


def _match_rate(predictions: Sequence[str], references: Sequence[str], normalize: str) -> float:
    _check_lengths(predictions, references)
    norm = get_normalizer(normalize)
    return _mean_percent([float(norm(p) == norm(r)) for p, r in zip(predictions, references, strict=True)])


def exact_match(predictions: Sequence[str], references: Sequence[str], *,
                normalize: str = DEFAULT_NORMALIZER) -> dict[str, float]:
    """% of predictions equal to their target after `NORMALIZERS[normalize]`."""
    return {"exact_match": _match_rate(predictions, references, normalize)}


def accuracy(predictions: Sequence[str], references: Sequence[str], *,
             normalize: str = DEFAULT_NORMALIZER) -> dict[str, float]:
    """`exact_match` under the name classification results are reported with (a generated label is right
    or wrong)."""
    return {"accuracy": _match_rate(predictions, references, normalize)}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects: break after . ! ? followed by whitespace, and at
    existing line breaks; blank lines dropped."""
    return "\n".join(sentence for line in text.splitlines()
                     for sentence in _SENTENCE_END.split(line.strip()) if sentence)


def rouge(predictions: Sequence[str], references: Sequence[str], *,
          normalize: str = DEFAULT_NORMALIZER) -> dict[str, float]:
    """Mean per-example F-measure of rouge1, rouge2, rougeL and rougeLsum (rouge-score, Porter stemming).
    `normalize` is ignored: rouge-score lowercases and tokenizes on non-alphanumerics itself."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_example = [scorer.score(split_sentences(reference), split_sentences(prediction))  # (target, prediction)
                   for prediction, reference in zip(predictions, references, strict=True)]
    return {kind: _mean_percent([scores[kind].fmeasure for scores in per_example]) for kind in ROUGE_TYPES}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
                ) -> tuple[float, str]:
    """sacrebleu's corpus BLEU with its defaults, and its signature. `references` holds one string per
    prediction, or a list of them per prediction (a missing one may be "": sacrebleu says `nrefs:var`)."""
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references)
    if not predictions:
        raise ValueError("BLEU of an empty corpus is undefined")
    per_prediction = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    nrefs = max(len(refs) for refs in per_prediction)
    # sacrebleu takes reference *streams*: stream j holds the j-th reference of every prediction.
    streams = [[refs[j] if j < len(refs) else "" for refs in per_prediction] for j in range(nrefs)]
    metric = BLEU()
    score = metric.corpus_score(list(predictions), streams).score
    return score, str(metric.get_signature())


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
         normalize: str = DEFAULT_NORMALIZER) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults). `normalize` is ignored: the 13a tokenizer is part of the metric."""
    _check_lengths(predictions, references)
    return {"bleu": corpus_bleu(predictions, references)[0] if predictions else float("nan")}


# Rank classification.

def rank_classification(scores: Sequence[Sequence[float]], gold: Sequence[int]) -> dict[str, float]:
    """% of examples whose gold choice has the highest score (the first of equal maxima wins)."""
    _check_lengths(scores, gold)
    predicted = [max(range(len(row)), key=row.__getitem__) for row in scores]
    return {"rank_accuracy": _mean_percent([float(p == g) for p, g in zip(predicted, gold, strict=True)])}


# The registry, and running a task's metrics.

METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "rouge": rouge,
    "bleu": bleu,
    "rank_classification": rank_classification,  # takes choice scores, not generations: see above
}
MODEL_METRICS = ("rank_classification",)  # need the model; the evaluator calls them itself


def compute_metrics(names: Sequence[str], predictions: Sequence[str], references: Sequence[str], *,
                    normalize: str = DEFAULT_NORMALIZER) -> dict[str, float]:
    """All scores of the generation metrics among `names` (model metrics such as rank_classification
    are skipped), merged into one dict."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; valid: {', '.join(METRICS)}")
    get_normalizer(normalize)
    results: dict[str, float] = {}
    for name in names:
        if name not in MODEL_METRICS:
            results.update(METRICS[name](predictions, references, normalize=normalize))
    return results
