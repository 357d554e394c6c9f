"""tidemark's benchmarks: the user's wait at compaction, side by side with the alternatives.

Run ``python -m benchmarks`` (``--quick`` for CI); see ``benchmarks/__main__.py``.
"""
