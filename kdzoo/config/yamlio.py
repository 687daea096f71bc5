"""YAML for configs: ``yaml.safe_load`` with bounds, and config files read as UTF-8 text.

``safe_load`` builds no objects from tags, but it still lets a few hundred bytes describe gigabytes:
each alias (``*a``) reuses a whole anchored value, so nine lines of nine aliases each expand to 9^9
values the moment anything walks, copies or prints them. So the document's node graph is measured
before any Python object is made: its values counted with every alias expanded (memoised per node,
so the count costs one pass over the text, not over the expansion), its depth, and aliases that refer
to their own ancestors (a recursive value) are refused, each in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdzoo.config.checks import MAX_TEXT, clip
from kdzoo.errors import KdzooError, first_line

MAX_DOCUMENT_VALUES = 10_000  # values in a document, aliases expanded; a full config holds a few hundred
MAX_DOCUMENT_DEPTH = 32  # nesting levels: section / key / model kwargs need a handful
MAX_NUMBER_TEXT = 100  # characters of one number: int64 needs 20, so this is generous and still printable
MAX_FILE_BYTES = 1 << 20  # a config file; the largest shipped one is 3 KB

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses deep nesting before Python's recursion limit does."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_DOCUMENT_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise KdzooError(f"{self.source}: nested more than {MAX_DOCUMENT_DEPTH} levels deep at line {line}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing in one line (naming ``source``, e.g. ``config file x.yaml``) a
    document too large or too deep once its aliases are expanded, a recursive alias, or an oversized
    scalar. A :class:`yaml.YAMLError` (bad syntax) passes through for the caller to word."""
    loader = _BoundedLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # a date that does not exist, an int Python will not convert
            raise KdzooError(f"{source}: a value cannot be read ({clip(first_line(exc))})") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node, source: str) -> None:
    """Count values and depth with aliases expanded, memoised by node: an alias is a shared node."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    open_nodes: set[int] = set()  # the nodes whose children are being measured: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_nodes.discard(key)
            children = [measured[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in children)
            depth = 1 + max((d for _, d in children), default=0)
            where = f"line {node.start_mark.line + 1}"
            if values > MAX_DOCUMENT_VALUES:
                raise KdzooError(
                    f"{source}: more than {MAX_DOCUMENT_VALUES} values once its YAML aliases are expanded ({where}); "
                    f"a config holds a few hundred: write the values out instead of nesting aliases"
                )
            if depth > MAX_DOCUMENT_DEPTH:
                raise KdzooError(f"{source}: nested over {MAX_DOCUMENT_DEPTH} levels deep through aliases ({where})")
            measured[key] = (values, depth)
        elif key not in measured:
            if key in open_nodes:
                raise KdzooError(
                    f"{source}: the YAML alias to the value at line {node.start_mark.line + 1} is inside that value "
                    f"(a recursive structure); a config value cannot contain itself"
                )
            if isinstance(node, yaml.ScalarNode):
                _check_scalar(node, source)
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _check_scalar(node: yaml.ScalarNode, source: str) -> None:
    limit = MAX_NUMBER_TEXT if node.tag in _NUMBER_TAGS else MAX_TEXT
    if len(node.value) > limit:
        kind = "number" if limit == MAX_NUMBER_TEXT else "string"
        raise KdzooError(
            f"{source}: a {kind} of {len(node.value)} characters at line {node.start_mark.line + 1} (at most {limit})"
        )


def read_text(path: Path, what: str = "config file") -> str:
    """The file at ``path`` as UTF-8 text, or one line naming the file and what is wrong with it."""
    if not path.exists():
        raise KdzooError(f"{what} not found: {path}")
    if not path.is_file():  # a folder, or a FIFO that would block the read forever
        raise KdzooError(f"{what} {path} is not a regular file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KdzooError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise KdzooError(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB; a config is a few KB of YAML")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:  # UTF-16/32 (PowerShell's `>`), or binary
        raise KdzooError(f"{what} {path} is not UTF-8 text (UTF-16 or binary): save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KdzooError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None
