"""The settings a transformers model type's config class knows, read from transformers' source files.

``hpo validate`` checks every ``model.config`` / ``model.from_config`` key against the model's config class.
Importing that class costs ~2 s of CPU (transformers' configuration module pulls in torch), five times the
whole command's budget; this module parses the class's source with ``ast`` instead (the config classes are
declarative dataclasses: annotated fields, an ``attribute_map``, property setters) and follows its bases
through transformers' own files. Anything it cannot read that way (an unknown model type, a base defined
outside a plain ``class`` statement, a file that moved) falls back to importing the class, so the answer is
never a guess, only sometimes slower.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

_AUTO = ("models", "auto", "auto_mappings.py")


class _Unreadable(Exception):
    """The source does not say it plainly: import the class instead."""


@functools.cache
def _root() -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without importing it
    return Path(spec.origin).parent if spec is not None and spec.origin else None


@functools.cache
def _top_level(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """A module's top-level classes (name -> source) and ``from`` imports (name -> (module, original name)).

    Cut by line instead of parsing whole files: transformers' modules are long (``ast.parse`` of the few a
    config class needs took ~50 ms of the command's 300) and only one class of each is wanted. A cut that
    goes wrong (a column-0 line inside a string) makes that class a SyntaxError, and the caller imports."""
    text = path.read_text(encoding="utf-8")
    imports: dict[str, tuple[str, str]] = {}
    for m in _FROM.finditer(text):
        for part in m.group(2).strip("()\n ").replace("\\\n", " ").split(","):
            words = part.split("#")[0].split()
            if len(words) == 1:
                imports[words[0]] = (m.group(1), words[0])
            elif len(words) == 3 and words[1] == "as":
                imports[words[2]] = (m.group(1), words[0])
    classes: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("class "):
            name = re.split(r"[(:\s]", line[6:], maxsplit=1)[0]
            j = i + 1
            while j < len(lines) and (not lines[j] or lines[j][0] in " \t)#"):
                j += 1
            classes[name] = "\n".join(_without_bodies(lines[i:j]))
    return classes, imports


def _without_bodies(lines: list[str]) -> list[str]:
    """A class's lines with the bodies of its methods cut to ``...``, except ``__init__`` and
    ``__post_init__`` (read for the attributes they set): PreTrainedConfig is ~1 000 lines of methods."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = re.match(r"    (?:async )?def (\w+)", line)
        if m is None or m.group(1) in ("__init__", "__post_init__"):
            continue
        depth = line.count("(") - line.count(")")  # the signature may span lines
        while depth > 0 and i < len(lines):
            out.append(lines[i])
            depth += lines[i].count("(") - lines[i].count(")")
            i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("        ")):
            i += 1
        out.append("        ...")
    return out


_FROM = re.compile(r"^from\s+([.\w]+)\s+import\s+(\([^)]*\)|[^\n]*)", re.MULTILINE)


def _pairs(text: str, name: str) -> dict[str, str]:
    """The ``("a", "b"),`` pairs of ``NAME = OrderedDict([...])`` in a module's text."""
    start = text.find(f"\n{name} = OrderedDict(")
    if start < 0:
        raise _Unreadable(name)
    end = text.find("\n)", start)
    return dict(re.findall(r'\(\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\)', text[start:end]))


@functools.cache
def _mappings() -> tuple[dict[str, str], dict[str, str]]:
    root = _root()
    if root is None:
        raise _Unreadable("transformers is not installed")
    text = root.joinpath(*_AUTO).read_text(encoding="utf-8")
    return _pairs(text, "CONFIG_MAPPING_NAMES"), _pairs(text, "SPECIAL_MODEL_TYPE_TO_MODULE_NAME")


def _module_file(root: Path, module: str, here: Path) -> Path:
    """The file an ``import`` names: relative (``from ..x import``) or absolute inside transformers."""
    level = len(module) - len(module.lstrip("."))
    module = module[level:]
    if level:
        base = here.parent
        for _ in range(level - 1):
            base = base.parent
    elif module.split(".")[0] == "transformers":
        base = root.parent
    else:
        raise _Unreadable(module)
    p = base.joinpath(*module.split(".")) if module else base
    for cand in (p.with_suffix(".py"), p / "__init__.py"):
        if cand.is_file():
            return cand
    raise _Unreadable(str(p))


def _find_class(path: Path, name: str, root: Path) -> tuple[ast.ClassDef, Path]:
    classes, imports = _top_level(path)
    if name in classes:
        node = ast.parse(classes[name], str(path)).body[0]
        assert isinstance(node, ast.ClassDef)
        return node, path
    if name in imports:
        module, original = imports[name]
        return _find_class(_module_file(root, module, path), original, root)
    raise _Unreadable(f"{name} in {path}")


def _is_classvar(annotation: ast.expr) -> bool:
    target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return (isinstance(target, ast.Name) and target.id == "ClassVar") or (
        isinstance(target, ast.Attribute) and target.attr == "ClassVar"
    )


def _class_keys(node: ast.ClassDef, path: Path, root: Path, keys: set[str], defaults: dict[str, Any]) -> None:
    """Add the keys of a class and its bases (bases first, so a subclass's defaults win)."""
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in ("object", "Generic"):
            continue
        if isinstance(base, ast.Subscript):  # Generic[T] and the like carry no config keys
            continue
        if not isinstance(base, ast.Name):
            raise _Unreadable(ast.unparse(base))
        try:
            cls, where = _find_class(path, base.id, root)
        except _Unreadable:
            if _imported_from_outside(path, base.id):
                continue  # a base from another package (huggingface_hub's mixins): no config keys
            raise
        _class_keys(cls, where, root, keys, defaults)
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and not _is_classvar(stmt.annotation):
            keys.add(stmt.target.id)
            if stmt.value is not None:
                try:
                    defaults[stmt.target.id] = ast.literal_eval(stmt.value)
                except ValueError:
                    defaults.pop(stmt.target.id, None)  # computed at run time: no default known here
                if defaults.get(stmt.target.id, 0) is None:
                    del defaults[stmt.target.id]  # None in the source is often filled in by __post_init__
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "attribute_map" for t in targets) and stmt.value is not None:
                keys.update(ast.literal_eval(stmt.value))
        elif isinstance(stmt, ast.FunctionDef):
            for dec in stmt.decorator_list:
                if isinstance(dec, ast.Attribute) and dec.attr == "setter":
                    keys.add(stmt.name)
            if stmt.name in ("__init__", "__post_init__"):
                args = stmt.args
                keys.update(a.arg for a in args.args[1:] + args.kwonlyargs)
                for sub in ast.walk(stmt):
                    for t in sub.targets if isinstance(sub, ast.Assign) else [getattr(sub, "target", None)]:
                        if (
                            isinstance(t, ast.Attribute)
                            and isinstance(t.value, ast.Name)
                            and t.value.id == "self"
                            and (not t.attr.startswith("_") or t.attr == "_name_or_path")
                        ):
                            keys.add(t.attr)


def _imported_from_outside(path: Path, name: str) -> bool:
    module = _top_level(path)[1].get(name, ("",))[0]
    return bool(module) and not module.startswith(".") and module.split(".")[0] != "transformers"


def _from_source(model_type: str) -> tuple[set[str], dict[str, Any]] | None:
    root = _root()
    names, special = _mappings()
    if root is None or model_type not in names:
        raise _Unreadable(model_type)  # unknown here: the import gives the authoritative list and suggestions
    module = special.get(model_type, model_type.replace("-", "_"))
    folder = root / "models" / module
    class_name = names[model_type]
    for path in sorted(folder.glob("configuration_*.py")):
        if class_name in _top_level(path)[0]:
            node, _ = _find_class(path, class_name, root)
            keys: set[str] = {"model_type"}  # a ClassVar, yet every saved config.json carries it
            defaults: dict[str, Any] = {}
            _class_keys(node, path, root, keys, defaults)
            return keys, defaults
    raise _Unreadable(f"{class_name} in {folder}")


def _from_import(model_type: str) -> tuple[set[str], dict[str, Any]] | None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        cls = CONFIG_MAPPING[model_type]
    except KeyError:
        return None
    defaults: dict[str, Any] = {}
    try:
        defaults = cls().to_dict()
    except Exception:  # a config that needs arguments: its signature still names the keys
        pass
    keys = set(defaults) | set(getattr(cls, "attribute_map", {}))
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            params = inspect.signature(init).parameters.values()
            keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        keys |= {n for n, v in klass.__dict__.items() if isinstance(v, property) and v.fset is not None}
    return keys, defaults


def config_keys(model_type: str, exact: bool = False) -> tuple[set[str], dict[str, Any]] | None:
    """The keys a model type's config class accepts (fields, aliases, settable properties) and the defaults
    the source states; None for a model type transformers does not know.

    Read from the source, the keys of a few exotic classes (attributes set by a ``setattr`` loop) can be
    missing: a caller about to call a key unknown asks again with ``exact=True`` (imports the class)."""
    if exact:
        return _from_import(model_type)
    try:
        return _from_source(model_type)
    except (_Unreadable, OSError, SyntaxError, ValueError):
        return _from_import(model_type)


@functools.cache
def task_model_types(mapping: str) -> frozenset[str]:
    """The model types of one of transformers' auto-model mappings (e.g. ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``),
    read from ``modeling_auto.py`` without importing it (which would bring torch); imported when unreadable."""
    root = _root()
    try:
        if root is None:
            raise _Unreadable("transformers is not installed")
        text = root.joinpath("models", "auto", "modeling_auto.py").read_text(encoding="utf-8")
        return frozenset(_pairs(text, mapping))
    except (_Unreadable, OSError, ValueError):
        from transformers.models.auto import modeling_auto

        return frozenset(getattr(modeling_auto, mapping))


def known_model_types() -> list[str]:
    """Every model type transformers knows (for "did you mean" hints)."""
    try:
        return sorted(_mappings()[0])
    except (_Unreadable, OSError, SyntaxError, ValueError):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        return sorted(CONFIG_MAPPING.keys())
