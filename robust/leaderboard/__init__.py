"""The robustness leaderboard: entries from reports and RobustBench records (:mod:`.entry`,
:mod:`.robustbench`), a SQLite/SQLAlchemy store (:mod:`.store`), ranking rules (:mod:`.ranking`)
and boards as Markdown, CSV, JSON and HTML (:mod:`.formats`, :mod:`.html`)."""

from robust.leaderboard.entry import EntryError, from_report, validate
from robust.leaderboard.ranking import boards
from robust.leaderboard.robustbench import from_robustbench, to_robustbench
from robust.leaderboard.store import Store, StoreError

__all__ = ["EntryError", "Store", "StoreError", "boards", "from_report", "from_robustbench", "to_robustbench",
           "validate"]
