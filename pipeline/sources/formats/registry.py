"""Input formats by suffix: each `InputFormat` subclass defined in a module of this package,
and any a package registers under the entry-point group `embedpipe.formats` (any name =
"module:Class", the class an `InputFormat`). So a new format is one new module, here or elsewhere.

The built-in formats are imported with this module, as any import is: a run's first request
then does not wait for them (about 9 ms of imports). Installed formats load on first use, not on
import, so a broken package fails a run with one line that names it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.formats.base import InputFormat

ENTRY_POINT_GROUP = "embedpipe.formats"


@cache
def formats_by_suffix() -> dict[str, InputFormat]:
    """Every format an input file may have, by suffix (lower case, with the dot)."""
    formats: dict[str, InputFormat] = {}
    for format_class in _BUILT_IN:
        _add(formats, format_class(), f"{format_class.__module__}.{format_class.__name__}")
    for point in declared_entry_points():
        _add(formats, _load(point), _origin(point))
    return formats


def declared_entry_points() -> list[EntryPoint]:
    """The group's entry points, as `entry_points(group=...)` finds them (a package found twice on
    the path counts once, the first copy that declares the group), parsing only the entry points of
    packages that name the group: parsing every installed package's took 6 ms of a run's start
    (3.5 ms this way, 250 packages), before its first request."""
    points: list[EntryPoint] = []
    names: set[str] = set()
    header = f"[{ENTRY_POINT_GROUP}]"
    for dist in distributions():
        declared = dist.read_text("entry_points.txt")
        if not declared or header not in declared:
            continue
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name not in names:
            names.add(name)
            points += dist.entry_points.select(group=ENTRY_POINT_GROUP)
    return points


def built_in_formats() -> list[type[InputFormat]]:
    """The `InputFormat` subclasses defined in this package's modules, modules in name order."""
    found = []
    for module_info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"{__package__}.{module_info.name}")
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, InputFormat)
            and value.__module__ == module.__name__
            and value is not InputFormat
        ]
    return found


_BUILT_IN = built_in_formats()


def supported_suffixes() -> list[str]:
    """The suffixes of the files a source may name, in registration order."""
    return list(formats_by_suffix())


def describe_suffixes() -> str:
    """The supported suffixes for a message: ".parquet, .csv or .jsonl"."""
    *most, last = supported_suffixes()
    return f"{', '.join(most)} or {last}" if most else last


def is_supported(path: Path | str) -> bool:
    """Whether some format reads a file of this name."""
    return str(path).lower().endswith(tuple(formats_by_suffix()))


def format_for(path: Path) -> InputFormat:
    """The format that reads `path`, by its (longest matching) suffix; a SourceError naming the
    supported suffixes for any other."""
    name = path.name.lower()
    matches = [suffix for suffix in formats_by_suffix() if name.endswith(suffix)]
    if not matches:
        raise SourceError(f"{path}: unknown format; use {describe_suffixes()}")
    return formats_by_suffix()[max(matches, key=len)]


def _origin(point: EntryPoint) -> str:
    return f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP})"


def _load(point: EntryPoint) -> InputFormat:
    where = _origin(point)
    try:
        loaded = point.load()
    except (ImportError, AttributeError) as exc:
        raise SourceError(
            f"{where}: cannot load it ({exc}); reinstall or remove the package that declares it"
        ) from None
    if not (isinstance(loaded, type) and issubclass(loaded, InputFormat)):
        raise SourceError(f"{where}: {loaded!r} is not an InputFormat class; fix the package that declares it")
    return loaded()


def _add(formats: dict[str, InputFormat], input_format: InputFormat, origin: str) -> None:
    for suffix in input_format.suffixes:
        if not suffix.startswith(".") or suffix != suffix.lower():
            raise SourceError(f"{origin}: suffix {suffix!r} must be lower case and start with a dot")
        if suffix in formats:
            raise SourceError(
                f"{origin}: {input_format.name} claims {suffix}, which {formats[suffix].name} reads already; "
                "remove one of the two"
            )
        formats[suffix] = input_format
