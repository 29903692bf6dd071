"""Build the trigger Lambda's deployment zip: ``trigger.py`` at the root plus the package's
pure-Python core, ``ecom_pipeline/__init__.py`` and every module of ``ecom_pipeline/core/``.

No pyspark, boto3 or other dependency goes in: the Lambda runtime provides boto3, and the core
must import nothing else from the package (checked below, and by the import-linter contract in
setup.cfg, so an import of, say, ``ecom_pipeline.adapters`` from the core fails the build
instead of the Lambda).

The zip is reproducible (sorted entries, fixed timestamps and permissions), so an unchanged
build has the same checksum and ``aws cloudformation package`` does not upload a new version.

    python infra/build_lambda_zip.py [--out build/lambda/trigger.zip]
"""

from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "lambda" / "trigger.zip"
PACKAGE = "ecom_pipeline"
HANDLER_FILE = ROOT / "lambda" / "trigger.py"
PACKAGE_DIR = ROOT / "jobs" / PACKAGE
CORE = "core"
# 1980-01-01, the earliest time a zip entry can hold: the same bytes on every build.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def members() -> dict[str, Path]:
    """Archive name -> source file."""
    files = {"trigger.py": HANDLER_FILE, f"{PACKAGE}/__init__.py": PACKAGE_DIR / "__init__.py"}
    for path in sorted((PACKAGE_DIR / CORE).glob("*.py")):
        files[f"{PACKAGE}/{CORE}/{path.name}"] = path
    return files


def package_imports(source: Path) -> set[str]:
    """The ``ecom_pipeline`` modules a file imports, as dotted names below the package."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE or node.module.startswith(PACKAGE + "."):
                below = node.module[len(PACKAGE) + 1 :]
                found.update(
                    f"{below}.{alias.name}" if below else alias.name for alias in node.names
                )
        elif isinstance(node, ast.Import):
            found.update(
                alias.name[len(PACKAGE) + 1 :]
                for alias in node.names
                if alias.name.startswith(PACKAGE + ".")
            )
    return found


def check_closed(files: dict[str, Path]) -> None:
    """Every package module the zipped files import is the core's."""
    for name, path in files.items():
        outside = sorted(
            m for m in package_imports(path) if m != CORE and not m.startswith(CORE + ".")
        )
        if outside:
            raise SystemExit(
                f"{name} imports {', '.join(f'{PACKAGE}.{m}' for m in outside)}, which the "
                f"Lambda zip does not ship: only {PACKAGE}.{CORE} goes in (no pyspark, no "
                "boto3 settings)"
            )


def build(out: Path) -> Path:
    files = members()
    for path in files.values():
        if not path.is_file():
            raise SystemExit(f"missing source file: {path}")
    check_closed(files)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16  # rw-r--r--: readable by the Lambda runtime user
            archive.writestr(info, files[name].read_bytes())
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    out = build(args.out)
    sys.stdout.write(f"{out} ({out.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
