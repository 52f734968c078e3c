"""Tests for pipeline.builtin: each format's parser on a few-line sample, archive reading, fetch bookkeeping.

Nothing here downloads: samples are strings, archives are built in tmp_path, and fetch_builtin is run on
stand-in sources.
"""

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import jinja2
import pytest
import yaml

import pipeline.builtin.fetch as builtin
from pipeline.builtin.acquire import PipArchive, SourceUnavailable, read_member
from pipeline.builtin.fetch import BuiltinSource, builtin_data_path, ensure_builtin, fetch_builtin
from pipeline.builtin.readers import (
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
    truncate_at_sentence,
    unshout_chapter_opening,
    vera_acronyms,
    wordnet_antonyms,
    wordnet_definitions,
    wordnet_example_passages,
)
from pipeline.builtin.sources import BUILTIN_SOURCES
from pipeline.tasks.span_corruption import corrupt

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

VADER_SAMPLE = (
    "1\t2.726315789\tSo lucky &amp; grateful.\r\n"
    "2\t0.2\tThe meeting is at noon.\r\n"
    "3\t-1.5\tAn awful, tedious film.\r\n"
    "4\t1.9\tSo lucky &amp; grateful.\r\n"
)

WORDNET_SAMPLE = """\
  1 This software and database is being provided to you, the LICENSEE, by
00001740 00 a 01 able 0 005 = 05200169 n 0000 = 05616246 n 0000 + 05616246 n 0101 + 05200169 n 0101 ! 00002098 a 0101 | (usually followed by `to') having the necessary means or skill or know-how or authority to do something; "able to swim"; "she was able to program her computer"
00002098 00 a 01 unable 0 002 = 05200169 n 0000 ! 00001740 a 0101 | (usually followed by `to') not having the necessary means or skill or know-how; "unable to get to town without a car"
00019731 00 s 02 handy 0 ready_to_hand(p) 0 002 & 00019131 a 0000 + 04718999 n 0101 | easy to reach; "found a handy spot for the can opener"
"""

FORTUNE_SAMPLE = (
    """\
A formal parsing algorithm should not always be used.
\t\t-- D. Gries
%
Short.
%
A hacker does for love what
others would not do for money.
%
A formal parsing algorithm should not always be used.
%
"""
    + "A very long story. " * 30
    + "\n%\n"
)


def _dictd_number(value: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    code = ""
    while True:
        code = digits[value % 64] + code
        value //= 64
        if value == 0:
            return code


def _dictd(entries: list[tuple[str, str]]) -> tuple[str, bytes]:
    """A dictd (.index text, data bytes) pair holding `entries` (headword, entry text)."""
    data, index = b"", []
    for headword, text in entries:
        encoded = text.encode()
        index.append(f"{headword}\t{_dictd_number(len(data))}\t{_dictd_number(len(encoded))}")
        data += encoded
    return "\n".join(index) + "\n", data


FREEDICT_ENTRIES = [
    ("00databaseshort", "00-database-short\n     German - English FreeDict Dictionary\n"),
    (
        "abreisen",
        "abreisen /ˈapɾˌaɪzən/ <v, intr>\ndepart <v>\n"
        '      "Bald danach sollte er abreisen."  - He was expected to depart soon thereafter.\n'
        '      "etw. abreisen"  - leave sth.\n'
        "   Synonym: {abfahren}\n\n",
    ),
    (
        "Noch ist nicht aller Tage Abend.",
        "Noch ist nicht aller Tage Abend. /nɔx ɪst nˈɪçt/\n"
        "It's not over until it's over., It's not / It isn't over till the fat lady sings. [Am.]\n",
    ),
    ("Sie kam gestern.", "Sie kam (gestern). /ziː kˈɑːm/\nShe came yesterday.\n"),
    ("Er kam.", "Er kam. /eːɾ kˈɑːm/\nHe came/arrived.\n"),
    ("Aalfang", "Aalfang /ˈɑːlfaŋ/ <masc, n, sg>\neel fishing <n>\n"),
]

VERA_ENTRIES = [
    ("00databaseinfo", "00-database-info\n     V.E.R.A.\n"),
    ("avx", "AVX\n       Advanced Vector eXtensions (CPU, Intel)\n       \n"),
    (
        "3gip",
        '3GIP\n       3rd Generation . Internet Protocol (org., IP, GPRS, WLAN,\nmobile-systems), "3G.IP"\n       \n',
    ),
    ("xuga", "XUGA\n       Ultra eXtended Graphics Adapter [1600 x 1200] (XGA)\n       \n"),
    ("cccc", "CCCC\n       ??? [compression]\n       \n"),
    ("abc", "ABC\n       Atanasoff-Berry-Computer\n       \n"),
]

NEWS_CSV = (
    "article_id,publish_date,article_source_link,title,subtitle,text\n"
    '1,2017/2/7,http://a,"Senate confirms DeVos",,"'
    + "The Senate voted on the nomination this afternoon. "
    * 30
    + '"\n'
    '2,2017/2/7,http://b,"Senate confirms DeVos",,"A repeated headline is kept once. '
    + "More text. "
    * 40
    + '"\n'
    '3,2017/2/7,http://c,"Week in pictures",,"Photographs."\n'
    '4,2017/2/7,http://d,"Broken quotes",,"The Senate voted on DeVos""?highly contentious nomination. '
    + "Filler. "
    * 60
    + '"\n'
    '5,2017/2/7,http://e,"Cook steps down",,"Share this with Media playback is not supported on this device '
    + "Alastair Cook resigned as captain. " * 12
    + '"\n'
)


def test_vader_keeps_clear_ratings_once_and_unescapes_html():
    rows = list(parse_vader_ground_truth(VADER_SAMPLE, "tweet"))
    assert rows == [
        {"text": "So lucky & grateful.", "label": "positive", "score": 2.73, "domain": "tweet"},
        {"text": "An awful, tedious film.", "label": "negative", "score": -1.5, "domain": "tweet"},
    ]


def test_wordnet_definitions_drop_examples_and_markers():
    rows = list(wordnet_definitions(parse_wordnet_data(WORDNET_SAMPLE)))
    assert rows[0] == {
        "word": "able",
        "pos": "adjective",
        "definition": "(usually followed by `to') having the necessary means or skill or know-how or authority "
        "to do something",
    }
    assert rows[2] == {"word": "handy", "pos": "adjective", "definition": "easy to reach"}
    synsets = list(parse_wordnet_data(WORDNET_SAMPLE))
    assert synsets[2].words == ("handy", "ready to hand")  # "(p)" marker and underscores gone


def test_wordnet_example_passages_join_the_examples_the_definitions_leave_out():
    synsets = list(parse_wordnet_data(WORDNET_SAMPLE))
    assert list(wordnet_example_passages(synsets, min_words=11)) == [
        {"text": "able to swim. she was able to program her computer. unable to get to town without a car.",
         "source": "wordnet examples"},
        {"text": "found a handy spot for the can opener.", "source": "wordnet examples"},
    ]


def test_wordnet_antonyms_resolve_pointer_and_keep_each_pair_once():
    assert list(wordnet_antonyms(parse_wordnet_data(WORDNET_SAMPLE))) == [
        {"word": "able", "pos": "adjective", "antonym": "unable"}
    ]


def test_fortunes_strip_attribution_length_and_repeats():
    rows = list(parse_fortunes(FORTUNE_SAMPLE, "computers"))
    assert rows == [
        {"text": "A formal parsing algorithm should not always be used.", "topic": "computers"},
        {"text": "A hacker does for love what others would not do for money.", "topic": "computers"},
    ]


def test_dictd_entries_use_the_index_and_skip_database_info():
    index, data = _dictd(VERA_ENTRIES)
    entries = list(dictd_entries(index + index, data))  # headwords pointing at one entry count once
    assert [headword for headword, _ in entries] == ["avx", "3gip", "xuga", "cccc", "abc"]
    assert entries[0][1].startswith("AVX\n")


def test_freedict_sentence_pairs_from_examples_and_sentence_entries():
    rows = list(freedict_sentence_pairs(dictd_entries(*_dictd(FREEDICT_ENTRIES))))
    assert rows == [
        {"de": "Bald danach sollte er abreisen.", "en": "He was expected to depart soon thereafter."},
        {"de": "Noch ist nicht aller Tage Abend.", "en": "It's not over until it's over."},
    ]  # phrases, "(gestern)" and "came/arrived" are left out


def test_vera_acronyms_expansion_and_context():
    rows = list(vera_acronyms(dictd_entries(*_dictd(VERA_ENTRIES))))
    assert rows == [
        {"acronym": "AVX", "expansion": "Advanced Vector eXtensions", "context": "CPU, Intel"},
        {
            "acronym": "3GIP",
            "expansion": "3rd Generation . Internet Protocol",
            "context": "org., IP, GPRS, WLAN, mobile-systems",
        },
        {"acronym": "XUGA", "expansion": "Ultra eXtended Graphics Adapter", "context": "XGA"},
        {"acronym": "ABC", "expansion": "Atanasoff-Berry-Computer", "context": ""},
    ]


def test_questions_words_carry_their_category():
    text = ": capital-common-countries\nAthens Greece Baghdad Iraq\n: family\nboy girl brother sister\n"
    assert list(parse_questions_words(text)) == [
        {
            "a": "Athens",
            "b": "Greece",
            "c": "Baghdad",
            "answer": "Iraq",
            "category": "capital-common-countries",
        },
        {"a": "boy", "b": "girl", "c": "brother", "answer": "sister", "category": "family"},
    ]


def test_news_articles_filters_and_truncates():
    rows = list(parse_news_articles(NEWS_CSV))
    assert [row["headline"] for row in rows] == ["Senate confirms DeVos", "Cook steps down"]
    assert all(len(row["article"]) <= 1000 and row["article"].endswith(".") for row in rows)
    assert rows[1]["article"].startswith("Alastair Cook resigned")


def test_truncate_at_sentence():
    assert truncate_at_sentence("One. Two. Three.", 100) == "One. Two. Three."
    assert truncate_at_sentence("First sentence here. Second one is long", 30) == "First sentence here."
    assert truncate_at_sentence("no sentence end in this long text", 12) == "no sentence"


def test_strip_osis_keeps_words_and_drops_notes():
    markup = (
        '<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> beginning, <w>God</w>'
        '<note placement="foot"><reference type="annotateRef">1:1 </reference>The Hebrew word.</note>'
        '<w lemma="strong:H1254">created</w> the earth. <div eID="gen25" type="x-p"/>'
    )
    assert strip_osis(markup) == "In the beginning, God created the earth."
    psalm = '<title canonical="true" type="psalm">A Psalm by David.</title> <l sID="x"/>Yahweh!<l eID="x"/>'
    assert strip_osis(psalm) == "A Psalm by David. Yahweh!"
    assert strip_osis('<title type="x-section">Heading</title>Text.') == "Text."


def test_unshout_chapter_opening():
    assert unshout_chapter_opening("EN el principio crió Dios") == "En el principio crió Dios"
    assert unshout_chapter_opening("¡AY de ti") == "¡Ay de ti"
    assert unshout_chapter_opening("Y dijo Dios") == "Y dijo Dios"


def test_align_verses_matches_references_and_drops_shifted_chapters():
    english = [
        ("Gen 1:1", "In the beginning."),
        ("Gen 1:2", "The earth was empty."),
        ("Gen 1:3", ""),
        ("Tob 1:1", "Only in one."),
    ]
    spanish = [("Gen 1:1", "En el principio."), ("Gen 1:2", "La tierra estaba vacía."), ("Gen 1:3", "Luz.")]
    assert [reference for reference, _, _ in align_verses(english, spanish)] == ["Gen 1:1", "Gen 1:2"]
    shifted = [
        ("Num 13:1", "Y habló Jehová á Moisés."),
        ("Num 13:2", "Envía tú hombres que reconozcan la tierra " * 3),
    ]
    english = [("Num 13:1", "Send men to spy out the land of Canaan " * 3), ("Num 13:2", "Yahweh spoke.")]
    assert list(align_verses(english, shifted)) == []


def test_arithmetic_is_deterministic_distinct_and_correct():
    first, second = list(arithmetic_examples(300, seed=3)), list(arithmetic_examples(300, seed=3))
    assert first == second and len({row["question"] for row in first}) == 300
    assert first != list(arithmetic_examples(300, seed=4))
    for row in first:
        assert int(row["answer"]) == int(eval(row["expression"].replace("/", "//")))  # noqa: S307 - digits only
        if row["operation"] == "divided by":
            a, b = map(int, row["expression"].split(" / "))
            assert a % b == 0
    assert any(re.search(r"[a-z]-[a-z]|hundred", row["question"]) for row in first)  # some in words


def test_read_member_reads_nested_archives(tmp_path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        payload = b"1\t2.0\tGood.\n"
        info = tarfile.TarInfo("data/tweets_GroundTruth.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/data.tar.gz")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    assert read_member(sdist, "pkg-1.0/data.tar.gz", "data/tweets_GroundTruth.txt") == b"1\t2.0\tGood.\n"

    inner_zip = io.BytesIO()
    with zipfile.ZipFile(inner_zip, "w") as archive:
        archive.writestr("NewsArticles.csv", "title,text\n")
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/data/NewsArticles.zip", inner_zip.getvalue())
    assert read_member(wheel, "pkg/data/NewsArticles.zip", "NewsArticles.csv") == b"title,text\n"
    with pytest.raises(SourceUnavailable, match="missing.txt"):
        read_member(wheel, "missing.txt")


def test_pip_archive_finds_pip_file_names(tmp_path):
    (tmp_path / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "vaderSentiment-3.3.2.tar.gz").write_bytes(b"")
    assert PipArchive("gensim", "4.4.0", wheel=True).path(tmp_path).name.startswith("gensim-4.4.0-")
    assert PipArchive("vadersentiment", "3.3.2").path(tmp_path).name == "vaderSentiment-3.3.2.tar.gz"
    with pytest.raises(SourceUnavailable):
        PipArchive("gensim", "4.3.0", wheel=True).path(tmp_path)


class _MissingPackage:
    version = "0"

    def fetch(self, downloads):
        raise SourceUnavailable("apt-get not found")


def test_fetch_builtin_writes_once_and_reports_unavailable(tmp_path, monkeypatch):
    calls = []

    def read_rows(downloads):
        calls.append(downloads)
        yield from [{"text": "a"}, {"text": "b"}, {"text": "a"}]  # the repeat is written once

    sources = {
        "local": BuiltinSource("local", "two rows", "MIT", "test", "nothing to get", read_rows),
        "missing": BuiltinSource(
            "missing",
            "never",
            "MIT",
            "test",
            "get it with: apt-get download x",
            read_rows,
            packages=(_MissingPackage(),),
        ),
    }
    monkeypatch.setattr(builtin, "BUILTIN_SOURCES", sources)
    results = fetch_builtin(tmp_path, progress=False)
    assert results["local"].available and results["local"].count == 2
    path = builtin_data_path(tmp_path, "local")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"text": "a"}, {"text": "b"}]
    assert not results["missing"].available and results["missing"].path is None
    assert (
        "apt-get not found" in results["missing"].error and "apt-get download x" in results["missing"].error
    )
    assert "\n" not in results["missing"].error
    manifest = json.loads((tmp_path / "builtin" / "manifest.json").read_text())
    assert (
        manifest["local"]["count"] == 2
        and manifest["local"]["license"] == "MIT"
        and "missing" not in manifest
    )

    assert len(calls) == 1  # "missing" is never read: its package failed first
    fetch_builtin(tmp_path, names=["local"], progress=False)  # already written: not read again
    assert len(calls) == 1
    fetch_builtin(tmp_path, names=["local"], force=True, progress=False)
    assert len(calls) == 2
    assert not list((tmp_path / "builtin").glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["truncated", "edited", "manifest lost", "manifest damaged"])
def test_a_damaged_builtin_file_is_reported_and_written_again(tmp_path, monkeypatch, capsys, damage):
    """A changed source file would be carved differently (test examples moved into training): never used."""
    calls = []

    def read_rows(downloads):
        calls.append(1)
        yield from ({"text": f"row {i}"} for i in range(100))

    monkeypatch.setattr(builtin, "BUILTIN_SOURCES", {"local": BuiltinSource("local", "rows", "MIT", "test", "", read_rows)})
    fetch_builtin(tmp_path, progress=False)
    path, manifest = builtin_data_path(tmp_path, "local"), tmp_path / "builtin" / "manifest.json"
    original = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "edited":
        path.write_bytes(original.replace(b"row 7", b"row 8"))
    elif damage == "manifest lost":
        manifest.unlink()
    else:
        manifest.write_text(manifest.read_text()[:40])
    assert ensure_builtin(tmp_path, "local") == path
    assert path.read_bytes() == original and len(calls) == 2
    assert "again" in capsys.readouterr().err
    ensure_builtin(tmp_path, "local")
    fetch_builtin(tmp_path, progress=False)
    assert len(calls) == 2 and capsys.readouterr().err == ""  # verified: not written again


def test_fetch_builtin_rejects_unknown_names(tmp_path):
    with pytest.raises(Exception, match="valid: sentiment"):
        fetch_builtin(tmp_path, names=["sentimentt"], progress=False)


SAMPLE_ROWS = {  # one parsed example per source, from the samples above, to render every shipped template
    "sentiment": lambda: next(parse_vader_ground_truth(VADER_SAMPLE, "tweet")),
    "wordnet_definitions": lambda: next(wordnet_definitions(parse_wordnet_data(WORDNET_SAMPLE))),
    "wordnet_antonyms": lambda: next(wordnet_antonyms(parse_wordnet_data(WORDNET_SAMPLE))),
    "bible_en_es": lambda: {"en": "In the beginning.", "es": "En el principio.", "reference": "Genesis 1:1"},
    "freedict_de_en": lambda: next(freedict_sentence_pairs(dictd_entries(*_dictd(FREEDICT_ENTRIES)))),
    "news_headlines": lambda: next(parse_news_articles(NEWS_CSV)),
    "analogies": lambda: next(parse_questions_words(": family\nboy girl brother sister\n")),
    "fortune_topics": lambda: next(parse_fortunes(FORTUNE_SAMPLE, "computers")),
    "acronyms": lambda: next(vera_acronyms(dictd_entries(*_dictd(VERA_ENTRIES)))),
    "arithmetic": lambda: next(arithmetic_examples(1)),
    "corpus": lambda: dict(zip(("inputs", "targets"), corrupt(
        next(wordnet_example_passages(parse_wordnet_data(WORDNET_SAMPLE)))["text"], seed=0), strict=True)),
}


def _builtin_task_folders():
    for task_yaml in sorted(TEMPLATES.glob("*/task.yaml")):
        spec = yaml.safe_load(task_yaml.read_text())
        if "builtin" in spec.get("source", {}):
            yield task_yaml.parent, spec


def test_every_source_is_used_and_every_builtin_task_renders():
    folders = list(_builtin_task_folders())
    assert {spec["source"]["builtin"] for _, spec in folders} == set(BUILTIN_SOURCES) == set(SAMPLE_ROWS)
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    for folder, spec in folders:
        example = SAMPLE_ROWS[spec["source"]["builtin"]]()
        templates = sorted(folder.glob("*.jinja"))
        pretraining = any("span_corruption" in str(step) for step in spec.get("preprocess", []))
        assert len(templates) >= (1 if pretraining else 3), folder
        for template in templates:
            parts = re.split(r"^\|\|\|$", template.read_text(), flags=re.MULTILINE)
            assert len(parts) == 2, template
            metadata = re.match(r"\A\{#(.*?)#\}\n", parts[0], re.DOTALL)
            inversion = bool(metadata and yaml.safe_load(metadata[1]).get("inversion"))
            variables = {**example, "answer_choices": spec.get("answer_choices", []), "options": ""}
            prompt, target = (environment.from_string(part).render(**variables).strip() for part in parts)
            assert prompt and target, template
            if spec.get("answer_choices") and not inversion:
                assert target in spec["answer_choices"], template
