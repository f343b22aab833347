"""`make run`: embed the docstrings of Python's standard library with the local model,
then show the rows nearest to an example query (`embedpipe similar`)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Prefect's state for the quickstart lives in the project: a ~/.prefect database that another
# Prefect version has migrated (which an older one cannot open) must not stop it.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".embedpipe" / "prefect"))
Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)  # Prefect does not create it

from flows.cli import main as embedpipe  # noqa: E402
from pipeline.config import load_config  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.yaml"
QUERY = "split a string into a list of words"
MODULES = """
abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses datetime
decimal difflib email enum fnmatch fractions functools glob gzip hashlib heapq hmac html http.client
importlib inspect io ipaddress itertools json logging math mimetypes operator os pathlib pickle platform
pprint queue random re secrets shlex shutil socket sqlite3 statistics string struct subprocess tarfile
tempfile textwrap threading time tokenize traceback types typing unittest urllib.parse urllib.request uuid
warnings weakref xml.etree.ElementTree zipfile zoneinfo
""".split()


def collect_docstrings() -> pl.DataFrame:
    """One row per documented module, class, function and method of MODULES."""
    rows = {}
    for name in MODULES:
        module = importlib.import_module(name)
        rows[name] = inspect.getdoc(module)
        for attr, value in vars(module).items():
            if attr.startswith("_") or getattr(value, "__module__", name) != module.__name__:
                continue
            rows[f"{name}.{attr}"] = inspect.getdoc(value)
            if inspect.isclass(value):
                for method, member in vars(value).items():
                    if not method.startswith("_") and callable(member):
                        rows[f"{name}.{attr}.{method}"] = inspect.getdoc(member)
    return pl.DataFrame({"id": list(rows), "text": list(rows.values())}, schema={"id": pl.String, "text": pl.String})


if __name__ == "__main__":
    started = time.monotonic()
    data = ROOT / "data" / "stdlib_docstrings.parquet"
    data.parent.mkdir(exist_ok=True)
    docs = collect_docstrings()
    docs.write_parquet(data)
    print(f"collected {docs.height} docstrings from {len(MODULES)} standard-library modules into {data.relative_to(ROOT)}")
    status = embedpipe(["run", str(CONFIG)])
    if status:
        sys.exit(status)
    print()
    status = embedpipe(["similar", str(ROOT / load_config(CONFIG).output.path), "--query", QUERY, "-k", "5"])
    if status:
        sys.exit(status)
    print(f"\nquickstart finished in {time.monotonic() - started:.0f} s")
