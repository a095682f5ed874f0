"""Reading config YAML safely: SafeLoader plus a bound on how far aliases may expand a document.

YAML aliases (``*a``) repeat an anchored value without copying it, so a few lines can stand for
billions of values ("billion laughs"). PyYAML builds such a document quickly as shared objects,
but everything that walks it afterwards (type checks, error messages) would take forever. The
composed node graph is measured before anything is built from it: its size with every alias
expanded, computed once per distinct node, must stay under :data:`MAX_VALUES`.
"""
from __future__ import annotations

from typing import Any, Optional

import yaml

# Real configs hold a few hundred values; this leaves room for generated ones and nothing absurd.
MAX_VALUES = 100_000


class YAMLTooLarge(ValueError):
    """A YAML document expands (through aliases) to more values than allowed, or refers to itself."""

    def __init__(self, message: str, mark: Optional[yaml.Mark] = None) -> None:
        self.mark = mark
        where = " (line %d, column %d)" % (mark.line + 1, mark.column + 1) if mark is not None else ""
        super().__init__(message + where)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Values in the document under ``root`` with aliases expanded; raises YAMLTooLarge past ``limit``."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLTooLarge("an alias refers to a value that contains it (a recursive YAML value)", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                raise YAMLTooLarge(
                    "YAML aliases expand this document to more than %d values (an alias bomb?); refusing to read it" % limit,
                    node.start_mark,
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents expanding beyond :data:`MAX_VALUES` values."""

    max_values = MAX_VALUES

    def compose_document(self) -> Any:
        """Compose the document's node graph, then check its expanded size before anything is built."""
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, self.max_values)
        return node


def load_yaml(text: str) -> Any:
    """Parse one YAML document like ``yaml.safe_load``, refusing alias bombs and recursive values (YAMLTooLarge)."""
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise YAMLTooLarge("the YAML is nested too deeply to read") from None
