"""Ranking rules: which entries are compared, in what order, and when a difference is real.

* Only entries measured under the same protocol are ranked together: for empirical boards the
  data set, threat model, eps, attack protocol (name and version) and number of examples; for
  certified boards the data set, norm, certification method, radius and number of examples.
* ``external`` (a lower number from an adaptive attack) takes precedence over the attack
  protocol's robust accuracy, as in RobustBench.
* Unreliable entries (flagged by the gradient-masking audit) are listed apart, unranked.
* Each value carries its 95% Clopper-Pearson interval; an entry whose interval overlaps the one
  above it is marked as statistically tied with it and shares its rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from robust.base.stats import clopper_pearson
from robust.leaderboard.entry import robust_value


def _eps_key(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _interval(accuracy: float, correct: int | None, n: int | None) -> list[float] | None:
    if n is None or n <= 0:
        return None
    return list(clopper_pearson(round(accuracy * n) if correct is None else correct, n))


def empirical_protocol(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The protocol an entry's robust accuracy was measured under (None without one)."""
    attack = entry.get("attack_protocol")
    if entry.get("robust") is None or not attack:
        return None
    return {"dataset": entry["dataset"], "threat": entry["threat"], "eps": _eps_key(entry.get("eps")),
            "eps_str": entry.get("eps_str"), "attack": attack.get("name"), "version": attack.get("version"),
            "n_examples": attack.get("n_examples")}


def certified_protocols(entry: Mapping[str, Any]) -> list[tuple[dict[str, Any], Mapping[str, Any]]]:
    """``(protocol, certificate)`` for each certified accuracy of the entry at a radius > 0 (at 0 a
    certificate is only the clean accuracy of the smoothed classifier)."""
    return [({"dataset": entry["dataset"], "threat": c.get("norm") or entry["threat"], "method": c["method"],
              "radius": _eps_key(c["radius"]), "n_examples": c.get("n")}, c) for c in entry.get("certified") or []
            if c["radius"] > 0]


def _title(kind: str, p: Mapping[str, Any]) -> str:
    if kind == "empirical":
        eps = p.get("eps_str") or p.get("eps")
        return (f"{p['dataset']} · {p['threat']} ε = {eps} · {p['attack']}"
                + (f" ({p['version']})" if p.get("version") else "") + f" · n = {p['n_examples']}")
    return f"{p['dataset']} · certified {p['threat']} radius {p['radius']:g} · {p['method']} · n = {p['n_examples']}"


def _key(p: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in p.items() if k != "eps_str"))


def _row(entry: Mapping[str, Any], value: float, correct: int | None, n: int | None) -> dict[str, Any]:
    clean = entry["clean"]
    return {
        "id": entry.get("id"), "name": entry["name"], "architecture": entry.get("architecture"),
        "value": value, "ci95": _interval(value, correct, n),
        "clean": clean["accuracy"], "clean_ci95": clean.get("ci95") or _interval(clean["accuracy"], clean.get("correct"),
                                                                               clean.get("n")),
        "external": entry.get("external") is not None, "unreliable": bool(entry.get("unreliable")),
        "reasons": [f["name"] + (f": {f['message']}" if f.get("message") else "") for f in entry.get("audit_flags") or []],
        "source": entry.get("source"), "entry": entry, "rank": None, "tied": False,
    }


def _rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reliable = sorted((r for r in rows if not r["unreliable"]), key=lambda r: (-r["value"], r["name"]))
    rank = 0
    for i, row in enumerate(reliable):
        above = reliable[i - 1] if i else None
        overlap = (above is not None and row["ci95"] is not None and above["ci95"] is not None
                   and row["ci95"][1] >= above["ci95"][0])
        if overlap:
            row["tied"], row["rank"] = True, above["rank"]
        else:
            rank = i + 1
            row["rank"] = rank
    apart = sorted((r for r in rows if r["unreliable"]), key=lambda r: (-r["value"], r["name"]))
    return reliable + apart


def boards(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ranked boards, one per protocol: ``{kind, title, protocol, rows}``; rows are ordered by
    rank (unreliable ones last, ``rank`` None) and say whether they are ``tied`` with the row above."""
    groups: dict[tuple, dict[str, Any]] = {}
    for entry in entries:
        p = empirical_protocol(entry)
        if p is not None:
            board = groups.setdefault(("empirical", _key(p)), {"kind": "empirical", "protocol": p, "rows": []})
            robust = entry["robust"]
            if entry.get("external") is not None:
                board["rows"].append(_row(entry, robust_value(entry), None, p["n_examples"]))
            else:
                board["rows"].append(_row(entry, robust["accuracy"], robust.get("correct"),
                                          robust.get("n") or p["n_examples"]))
        for p, cert in certified_protocols(entry):
            board = groups.setdefault(("certified", _key(p)), {"kind": "certified", "protocol": p, "rows": []})
            board["rows"].append(_row(entry, cert["accuracy"], cert.get("correct"), cert.get("n")))
    out = []
    for (kind, _), board in sorted(groups.items(), key=lambda kv: (kv[0][0] != "empirical", str(kv[0][1]))):
        board["title"] = _title(kind, board["protocol"])
        board["rows"] = _rank(board["rows"])
        out.append(board)
    return out
