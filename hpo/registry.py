"""Closed registries read off their discriminated unions.

A study file names a sampler, a pruner or a search-space entry by a tag (``name: tpe``, ``type: float``).
The tags it may write are the ``Literal`` values of the union's members, so adding a config class to the
union is the one step that registers it: error messages and location formatting read the names from here.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin


def union_tags(union: Any, field: str) -> tuple[str, ...]:
    """The tags of ``Annotated[Union[A, B, ...], Field(discriminator=field)]``, in the union's order."""
    inner = get_args(union)[0] if get_origin(union) is Annotated else union
    tags: list[str] = []
    for member in get_args(inner):
        tags.extend(get_args(member.model_fields[field].annotation))
    return tuple(tags)
