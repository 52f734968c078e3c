"""Other people's tasks as flanpipe task folders: promptsource's community templates (`promptsource`) and
the held-out benchmarks MMLU and BIG-bench (`benchmarks`, fetched by `benchmark_fetch`).
"""
