"""The YAML dialect of the baseline files, built on PyYAML.

Reading: :data:`StrictLoader` (libyaml's parser where PyYAML has it, else :class:`PyLoader`)
refuses aliases, anchors, tags, deep nesting and duplicate keys, and reads plain scalars as
null, booleans, decimal integers and decimal floats only. Writing: :func:`canonical`, the one
block-style text of a document.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.emitter import ScalarEvent
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

#: Input bounds. A real baseline nests four levels deep (file, entries, entry, field); far
#: deeper nesting is a mistake or an attack, refused instead of exhausting the stack.
MAX_DEPTH = 16
#: Digits of an integer YAML reads as a number; longer ones stay strings and fail validation.
MAX_INT_DIGITS = 20


class DuplicateKey(Exception):
    def __init__(self, where: tuple[str, ...], key: str, first_line: int, line: int) -> None:
        super().__init__(key)
        self.where, self.key, self.first_line, self.line = where, key, first_line, line


class Refused(Exception):
    """YAML that is valid but never needed in the stores (alias, tag, deep nesting)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class _Resolver(BaseResolver):
    """Plain scalars read as null, booleans, decimal integers and decimal floats only.

    YAML 1.1 also reads ``2024-13-45`` as a date, ``52:25:48`` as the base-60 number 188748
    and ``0x1F`` as hex; in a baseline those are typos, so they stay strings here and fail
    validation with a message that shows them.
    """


_DIGITS = f"[0-9]{{1,{MAX_INT_DIGITS}}}"
_IMPLICIT = (
    (
        "bool",
        "^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
        "yYnNtTfFoO",
    ),
    ("null", "^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", f"^[-+]?{_DIGITS}$", "-+0123456789"),
    ("float", rf"^[-+]?(?:{_DIGITS}\.[0-9]{{0,{MAX_INT_DIGITS}}}|\.{_DIGITS})$", "-+0123456789."),
)
for _tag, _regexp, _first in _IMPLICIT:
    _Resolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_regexp), list(_first))


class _BoundedComposer(Composer):
    """Composer that refuses aliases, anchors, explicit tags, deep nesting, duplicate keys.

    Baselines never need aliases or tags; refusing them keeps a 500-byte alias bomb from
    expanding into gigabytes and ``!!timestamp x`` from reaching a constructor that raises.
    Duplicate keys are refused because PyYAML silently keeps the last one, which would hide
    one of two recorded figures after a bad merge.
    """

    _depth = 0
    #: what the messages call the file: "alias *a is not allowed in a baseline file"
    what = "a baseline file"

    def compose_document(self) -> Node | None:  # type: ignore[override]
        node = super().compose_document()
        if node is not None:
            _check_duplicates(node, ())
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise Refused(
                f"alias *{event.anchor} is not allowed in {self.what}; write the value out",
                event.start_mark,
            )
        if getattr(event, "anchor", None) is not None:
            raise Refused(
                f"anchor &{event.anchor} is not allowed in {self.what}; remove it",
                event.start_mark,
            )
        if getattr(event, "tag", None) is not None:
            raise Refused(
                f"tag {_short_tag(event.tag)} is not allowed in {self.what}; remove it "
                f"(figures are plain integers, all else plain strings)",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            raise Refused(
                f"nested deeper than {MAX_DEPTH} levels; {self.what} needs 4 "
                f"(file, entries, entry, field)",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


class PyLoader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor, _Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)


StrictLoader: type = PyLoader
if getattr(yaml, "__with_libyaml__", False):
    # libyaml's parser reads about three times faster than the pure Python one; composing
    # stays in Python (first in the MRO) so that the bounds above apply either way.
    class CLoader(_BoundedComposer, yaml._yaml.CParser, SafeConstructor, _Resolver):  # type: ignore[misc, name-defined]
        def __init__(self, stream: str) -> None:
            yaml._yaml.CParser.__init__(self, stream)  # type: ignore[attr-defined]
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            _Resolver.__init__(self)

    StrictLoader = CLoader


class Invalid(Exception):
    """Text that is not a document of this dialect: ``where`` (``", line 3, column 5"`` or
    ``""``) and ``text`` (``"invalid YAML: ..."``) make the message after the file's name."""

    def __init__(self, where: str, text: str) -> None:
        super().__init__(f"{where}: {text}")
        self.where, self.text = where, text


def load(text: str, what: str = "a baseline file") -> tuple[Any, Node | None]:
    """The document's data and its node tree (which knows the line of every key); ``what``
    the file is called in messages.

    Raises :class:`DuplicateKey`, or :class:`Invalid` for a syntax error, a refused
    construct (alias, anchor, tag, deep nesting) or any constructor error that gets
    through the bounds: never another exception.
    """
    try:
        loader = StrictLoader(text)
        loader.what = what
        try:
            node = loader.get_single_node()
            return (None if node is None else loader.construct_document(node)), node
        finally:
            loader.dispose()
    except DuplicateKey:
        raise
    except Refused as exc:
        raise Invalid(position(exc.mark), f"invalid YAML: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise Invalid(position(mark), f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise Invalid("", f"invalid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        # The bounds above should leave no constructor error; if one gets through, it is
        # still reported against the file, never as a traceback.
        raise Invalid("", f"invalid YAML value: {type(exc).__name__}: {exc}"[:480]) from None


def position(mark: Any) -> str:
    """``", line L, column C"`` of a YAML mark (1-based), ``""`` without one."""
    return f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _check_duplicates(node: Node, where: tuple[str, ...]) -> None:
    if isinstance(node, MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            key = (key_node.tag, str(key_node.value)) if isinstance(key_node, ScalarNode) else None
            if key is not None:
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKey(where, key[1], seen[key], line)
                seen[key] = line
            child = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
            _check_duplicates(value_node, (*where, child))
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, (*where, str(index)))


# --------------------------------------------------------------------------- dumping


class Dumper(yaml.SafeDumper):
    """Safe dumper: no aliases, and test ids up to YAML's limit stay plain keys."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def check_simple_key(self) -> bool:
        # PyYAML writes keys longer than 128 characters as "? key" (explicit form), which
        # reads badly in review; parametrised test ids often are that long. YAML allows
        # plain keys up to 1024 characters, and PyYAML's reader accepts them.
        if isinstance(self.event, ScalarEvent):
            if self.analysis is None:
                self.analysis = self.analyze_scalar(self.event.value)
            analysis = self.analysis
            if len(analysis.scalar) < 1000 and not analysis.empty and not analysis.multiline:
                return True
        return super().check_simple_key()


def canonical(document: dict[str, Any]) -> str:
    return yaml.dump(
        document,
        Dumper=Dumper,
        sort_keys=False,  # the order above is the canonical one
        default_flow_style=False,
        allow_unicode=True,
        width=10**9,  # never fold a long test id over two lines
        explicit_end=False,
    )
