"""Every writer of results (Markdown, PNG plots, TSV, JSON, wandb tables), from report dicts only.

:mod:`.format` (percentages, accuracies, threat labels: pure Python), :mod:`.markdown` (tables and the
sections documents share), :mod:`.plots` (figures and colours), :mod:`.files` (staged, fsync'd writes),
and one module per document: :mod:`.evaluation`, :mod:`.certification`, :mod:`.audit`.
Nothing is imported here, so the leaderboard can use :mod:`.format` without numpy or matplotlib.
"""
