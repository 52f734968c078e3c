"""flanpipe: FLAN-style multi-task instruction tuning for encoder-decoder models.

The package is a set of small stages in layers that import one way: `tasks` renders task folders into
prompt/target pairs, `mixing` blends tasks, `data` turns examples into batches, `forward` runs the model,
`train` tunes it and `evaluate` scores it. docs/ARCHITECTURE.md has the map; `flanpipe --help` the commands.
"""

__version__ = "0.1.0"
