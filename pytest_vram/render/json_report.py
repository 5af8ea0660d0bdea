"""What JSON carries: the ``--vram-json`` document, the ``user_properties`` entries of a
measured test and of a claim (which JUnit XML shows), and github-action-benchmark's input.

A measurement is its :meth:`Record.to_dict <pytest_vram.core.records.Record.to_dict>` with
each verdict's ``summary`` and ``detail`` in words; :meth:`Record.from_dict` reads the
structured fields back and leaves the words.
"""

from __future__ import annotations

import json
from typing import Any

from pytest_vram.core.claims import ClaimVerdict
from pytest_vram.core.records import PROPERTY, Outcome, Record
from pytest_vram.core.runs import Run
from pytest_vram.render import claims, verdicts

#: Version of the ``--vram-json`` document layout.
JSON_VERSION = 1
#: Name of the ``user_properties`` entry that carries a claim's verdict.
CLAIM_PROPERTY = "vram_claim"


def measurement(record: Record) -> dict[str, Any]:
    """One measurement of ``--vram-json``: its figures, setup and verdicts in words."""
    data = record.to_dict()
    data["verdicts"] = [
        {
            **v.to_dict(),
            "summary": verdicts.summary(record, v),
            "detail": verdicts.detail(record, v),
        }
        for v in record.verdicts
    ]
    return data


def record_property(record: Record) -> tuple[str, str]:
    """A ``user_properties`` entry; JSON text so that JUnit XML shows it readably."""
    return PROPERTY, json.dumps(measurement(record), sort_keys=True)


def claim(verdict: ClaimVerdict) -> dict[str, Any]:
    """One claim's verdict: its kind, the message, every figure it read."""
    return {
        "name": verdict.name,
        "kind": verdict.kind.value,
        "fails": verdict.fails,
        "message": claims.message(verdict),
        "figures": verdict.figures,
        "expect_broken": verdict.expect_broken,
    }


def claim_property(verdict: ClaimVerdict) -> tuple[str, str]:
    """The ``user_properties`` entry of a claim's reported teardown."""
    return CLAIM_PROPERTY, json.dumps(claim(verdict), sort_keys=True)


def document(outcome: Outcome) -> str:
    """The ``--vram-json`` document: every record with its figures and verdicts."""
    document = {
        "version": JSON_VERSION,
        "measurements": [measurement(r) for r in outcome.records],
        "stale": outcome.stale,
        "pruned": outcome.pruned,
        "updated": [
            {"key": key, "old_peak_bytes": old, "new_peak_bytes": new}
            for key, old, new in outcome.updated
        ],
        "errors": outcome.errors,
        "setup_changes": outcome.setup_changes,
        "claims": [{"nodeid": nodeid, **claim(v)} for nodeid, v in outcome.claims],
        "run": outcome.run,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def benchmark(run: Run) -> str:
    """github-action-benchmark's ``customSmallerIsBetter`` input: one entry per peak."""
    entries = [
        {
            "name": key,
            "unit": "bytes",
            "value": int(m["peak_bytes"]),
            "extra": f"model {m.get('model_bytes')} B; profile {m.get('profile', '?')}",
        }
        for key, m in sorted(run.measurements.items())
    ]
    return json.dumps(entries, indent=2) + "\n"
