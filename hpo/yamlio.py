"""YAML reading with YAML 1.2 floats.

PyYAML implements YAML 1.1, where ``1e-5`` (no dot, or no sign in the exponent) is a *string*. Learning
rates are written that way all the time, so the loader below resolves every YAML 1.2 float literal to a
float; ``"1e-5"`` in quotes stays a string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose float resolver follows YAML 1.2 (``1e-5`` is a float)."""


# Replace the float resolver: drop YAML 1.1's, add the 1.2 one. The resolver table is per first character.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _no_duplicate_keys(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    # A repeated key silently overriding an earlier one is a classic study-file bug: reject it.
    loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys first, as SafeLoader does
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a list or mapping cannot be a key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def loads(text: str) -> Any:
    """Parse YAML text with YAML 1.2 float resolution."""
    return yaml.load(text, Loader=_Loader)


def load(path: str | Path) -> Any:
    """Parse a YAML file with YAML 1.2 float resolution."""
    return loads(Path(path).read_text(encoding="utf-8"))


def dumps(data: Any) -> str:
    """Dump plain data as block-style YAML, keys in their given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
