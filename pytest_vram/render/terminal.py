"""What the terminal shows: the header line, the ``VRAM`` section (what was in force, the
measurement table at the terminal's width, the notes to act on), the ``-v`` peak, and the
comparison of two runs (``python -m pytest_vram compare``)."""

from __future__ import annotations

from typing import Any

from pytest_vram.core.records import Outcome, Record
from pytest_vram.core.runs import Change
from pytest_vram.core.units import format_delta, format_size
from pytest_vram.core.verdicts import Kind
from pytest_vram.render.verdicts import summary, update_command

#: What every figure is: the caching allocator's allocated bytes (not reserved, not nvidia-smi).
METRIC = "peak allocated bytes (torch.cuda.max_memory_allocated)"


def header(
    *,
    backend: str,
    profile: str | None,
    baselines: str,
    strict: bool,
    attribution: str,
    allocator: str,
    card: str | None = None,
    emulate: str = "test",
    declared_card: str | None = None,
) -> str:
    """The ``vram:`` line of pytest's header: the options in force; ``card``: the card the
    estimator follows, where it may measure; ``declared_card``: the default card of every
    vram test (``--vram-card``), which the estimator then follows."""
    profile = profile or "the backend's"
    line = (
        f"vram: backend {backend}, profile {profile}, baselines {baselines}/, "
        f"strict {'on' if strict else 'off'}, attribution {attribution}, allocator {allocator}"
    )
    if declared_card is not None:
        line += f", card {declared_card}"
    elif card is not None:
        line += f", estimator card {card}"
    if card is not None and emulate == "session":
        line += ", answering from configure on (--vram-emulate=session)"
    return line


def peaks(records: list[Record]) -> str:
    """What ``-v`` adds to a measured test's status: ``peak 150.0 MiB``."""
    return ", ".join(f"peak {format_size(r.peak_bytes)}" for r in records)


def in_force(records: list[Record], strict: bool, width: int = 80) -> list[str]:
    """First lines of the VRAM section: the setup the figures were measured and judged on,
    as few lines as ``width`` allows."""
    seen: dict[tuple[str, str, str, str, str, str], None] = {}
    for r in records:
        ctx = r.setup
        where = (ctx.get("backend", "?"), ctx.get("device", "?"), r.profile, r.baseline_path)
        card = ctx.get("card", "")
        if r.card_note:  # said once, in the notes after the table
            card = card.replace(f" ({r.card_note})", "")
        seen[(*where, ctx.get("metric", METRIC), card)] = None
    lines: list[str] = []
    for backend, device, profile, path, metric, card in seen:
        parts = [
            f"backend {backend} on {device}",
            *([f"card {card}"] if card else []),
            f"profile {profile}",
            f"baseline {path}",
            f"strict {'on' if strict else 'off'}",
            f"figures: {metric}",
        ]
        current = ""
        for part in parts:
            if current and len(current) + 2 + len(part) > width:
                lines.append(current)
                current = part
            else:
                current = f"{current}; {part}" if current else part
        lines.append(current)
    return lines


def section(terminalreporter: Any, outcome: Outcome, strict: bool) -> None:
    """The ``VRAM`` section: what was in force, the table at the terminal's width, notes."""
    terminalreporter.ensure_newline()  # else a blank line follows the header
    terminalreporter.section("VRAM")
    width = terminalreporter._tw.fullwidth
    if outcome.records:
        for line in in_force(outcome.records, strict, width):
            terminalreporter.write_line(line)
        for line in table_lines(outcome.records, width):
            terminalreporter.write_line(line)
    for line in note_lines(outcome):
        terminalreporter.write_line(line)


# --------------------------------------------------------------------------- the table

COLUMNS = ("params", "model", "peak", "activation", "reserved", "baseline", "delta", "verdict")
#: shown after the others when a measurement of the run was also timed (pytest-benchmark)
TIME_COLUMN = "time"
#: shown after the peak when a measurement of the run answered ``vram.largest``
LARGEST_COLUMN = "largest"


def columns(records: list[Record]) -> tuple[str, ...]:
    """The table's columns for ``records``: :data:`COLUMNS`, with ``largest`` after the
    peak where a record has one, and ``time`` last where one was timed."""
    names = list(COLUMNS)
    if any(r.largest for r in records):
        names.insert(names.index("peak") + 1, LARGEST_COLUMN)
    if any(r.time for r in records):
        names.append(TIME_COLUMN)
    return tuple(names)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    for factor, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor:
            return f"{n / factor:.2f}{suffix}"
    return str(n)


def largest_cell(record: Record) -> str:
    """The ``largest`` cell: the answer, ``none`` where not even the first value fits,
    ``>=N`` where the whole range fits (the range, not the card, ended the search)."""
    largest = record.largest
    if largest is None:
        return "-"
    if not largest.fits:
        return "none"
    return f">={largest.value}" if largest.whole_range else str(largest.value)


def row_cells(record: Record, names: tuple[str, ...] = COLUMNS) -> list[str]:
    """The cells of ``record`` for the columns ``names``."""
    base = record.baseline_peak_bytes
    cells = {
        "params": _params(record.params),
        "model": format_size(record.model_bytes),
        "peak": format_size(record.peak_bytes),
        LARGEST_COLUMN: largest_cell(record),
        "activation": format_size(record.activation_bytes),
        "reserved": "-" if record.reserved_bytes is None else format_size(record.reserved_bytes),
        "baseline": "-" if base is None else format_size(base),
        "delta": "-" if base is None else format_delta(record.peak_bytes, base),
        "verdict": record.kind.value,
        TIME_COLUMN: time_cell(record.time),
    }
    return [cells[name] for name in names]


#: Columns dropped first when the terminal is narrow (the key, peak, delta and verdict stay).
DROP_ORDER = ("activation", "reserved", "params", "baseline", "model", TIME_COLUMN)
#: The narrowest key column worth showing; below it keys are shortened in the middle.
MIN_KEY = 24
#: Left-aligned columns (words); the others are figures, right-aligned.
_WORDS = ("verdict", TIME_COLUMN)


def table_lines(records: list[Record], width: int = 80) -> list[str]:
    """The measurement table in at most ``width`` columns.

    Keys that share a test file are listed under the file's name; columns are dropped
    (``DROP_ORDER``) until the keys fit, and a key still too long is shortened in the
    middle, so that every row is one line.
    """
    every = columns(records)
    rows = [row_cells(r, every) for r in records]
    shown = list(every)

    def widths() -> list[int]:
        return [max(len(h), *(len(row[every.index(h)]) for row in rows)) for h in shown]

    def key_room() -> int:
        return width - sum(widths()) - 2 * len(shown)

    files = {r.key.split("::", 1)[0] for r in records}
    keys = [r.key for r in records]
    prefix = ""
    if max(len(k) for k in keys) > key_room() and len(files) == 1 and "::" in keys[0]:
        prefix = next(iter(files)) + "::"  # named once, above the table
        keys = [k[len(prefix) :] for k in keys]
    longest = max(len("test"), *(len(k) for k in keys))

    for name in DROP_ORDER:
        if key_room() >= longest:
            break
        if name in shown:
            shown.remove(name)
    key_width = max(MIN_KEY, min(longest, key_room()))
    col_widths = widths()

    def line(key: str, cells: list[str]) -> str:
        numbers = "  ".join(
            c.ljust(w) if shown[i] in _WORDS else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, col_widths, strict=True))
        )
        return f"{shorten(key, key_width).ljust(key_width)}  {numbers}".rstrip()

    lines = [f"{prefix[:-2]}:"] if prefix else []
    lines.append(line("test", shown))
    for key, cells in zip(keys, rows, strict=True):
        lines.append(line(key, [cells[every.index(h)] for h in shown]))
    return lines


def shorten(text: str, width: int) -> str:
    """``test_inference[maximum-phase8]`` in 20 columns -> ``test_infe...m-phase8]``."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]


def note_lines(outcome: Outcome) -> list[str]:
    """Lines after the table: what to act on (lock in, record, review, delete)."""
    lines: list[str] = []
    for r in outcome.records:
        if r.kind is Kind.IMPROVEMENT:
            lines.append(
                f"improvement: {r.key}: {summary(r, r.verdicts[0])}; lock it in with "
                f"`{update_command(r.nodeid)}`"
            )
    for r in outcome.records:
        if r.kind is Kind.NEW and not outcome.update:
            lines.append(
                f"new: {r.key}: peak {format_size(r.peak_bytes)}, no baseline in "
                f"{r.baseline_path}; record it with `{update_command(r.nodeid)}`"
            )
        elif r.kind is Kind.NEW:
            lines.append(f"new: {r.key}: peak {format_size(r.peak_bytes)} recorded")
    for key, old, new in outcome.updated:
        lines.append(
            f"updated: {key}: peak {format_size(old)} -> {format_size(new)} "
            f"({format_delta(new, old)})"
        )
    for path in outcome.written:
        lines.append(f"written: {path}")
    lines.extend(f"conflict: {c}" for c in outcome.conflicts)
    for path, keys in sorted(outcome.stale.items()):
        for key in keys:
            lines.append(
                f"stale: {key} in {path}: no collected test produces it; delete with "
                f"`pytest --vram-update --vram-prune`"
            )
    for path, keys in sorted(outcome.pruned.items()):
        lines.extend(f"pruned: {key} from {path}" for key in keys)
    for r in outcome.records:
        if r.leaked_bytes:
            leaked = format_size(r.leaked_bytes)
            lines.append(f"leak: {r.key}: {leaked} still allocated after the test")
    lines.extend(card_lines(outcome.records))
    for path, change in sorted(outcome.setup_changes.items()):
        lines.append(
            f"setup: {path} was recorded with {change}; figures may differ for that reason "
            f"alone (re-record with `pytest -m vram --vram-update` once that is understood)"
        )
    lines.extend(f"error: {e}" for e in outcome.errors)
    return lines


def card_lines(records: list[Record]) -> list[str]:
    """Notes about the cards the tests ran on: one per card whose usable capacity is only an
    upper bound (what it holds besides PyTorch is not measured), and one per ``largest``
    that the range, not the card, ended."""
    lines: list[str] = []
    unknown: dict[str, tuple[str, int]] = {}
    for r in records:
        if r.card is not None and r.card_note:
            note, count = unknown.get(r.card, (r.card_note, 0))
            unknown[r.card] = (note, count + 1)
    for card, (note, count) in sorted(unknown.items()):
        which = "measurement" if count == 1 else "measurements"
        lines.append(f"card: {card} ({count} {which}): {note}")
    for r in records:
        if r.largest is not None and r.largest.whole_range:
            lines.append(
                f"largest: {r.key}: every value up to high={r.largest.high} fits "
                f"{r.largest.card}; raise high= to find where the card runs out"
            )
    return lines


def time_cell(time: dict[str, Any] | None) -> str:
    """The VRAM table's ``time`` cell: the median round, or why there is none."""
    if time is None:
        return "-"
    if not time["gpu"]:
        return f"no GPU time ({time['backend']})"
    return f"{format_seconds(time['median_s'])} median of {time['rounds']}"


def format_seconds(seconds: float) -> str:
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# --------------------------------------------------------------------------- two runs


def comparison_lines(changes: list[Change], width: int = 80) -> list[str]:
    """The comparison for a terminal, at most ``width`` columns (keys shortened)."""
    rows = [
        [
            "-" if c.old is None else format_size(c.old),
            "-" if c.new is None else format_size(c.new),
            c.delta,
            c.status,
        ]
        for c in changes
    ]
    head = ["old", "new", "delta", ""]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    keys = [c.key for c in changes]
    files = {k.split("::", 1)[0] for k in keys}
    prefix = ""
    if len(files) == 1 and all("::" in k for k in keys) and max(map(len, keys)) > width - 50:
        prefix = next(iter(files)) + "::"
    longest = max([4, *(len(k) - len(prefix) for k in keys)])
    key_width = max(20, min(longest, width - sum(widths) - 8))

    def line(key: str, cells: list[str]) -> str:
        figures = "  ".join(c.rjust(w) for c, w in zip(cells[:3], widths, strict=False))
        return f"{shorten(key, key_width).ljust(key_width)}  {figures}  {cells[3]}".rstrip()

    lines = [f"{prefix[:-2]}:"] if prefix else []
    lines.append(line("test", head))
    lines.extend(line(c.key[len(prefix) :], r) for c, r in zip(changes, rows, strict=True))
    counts = {s: sum(c.status == s for c in changes) for s in ("grew", "shrank", "new", "gone")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f", of {len(changes)}")
    return lines
