"""List the functions in src/ longer than a limit (60 lines by default), longest first.

Length counts from the ``def`` line (decorators excluded) to the function's last line, docstring included; nested
functions are listed on their own as well.

    .venv/bin/python scripts/long_functions.py [--limit N] [paths ...]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def long_functions(paths: list[Path], limit: int) -> list[tuple[int, str, str]]:
    """``(length, qualified name, file:line)`` of every function over ``limit`` lines in the .py files of ``paths``."""
    found = []
    for path in sorted(p for root in paths for p in (root.rglob("*.py") if root.is_dir() else [root])):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = f"{prefix}{getattr(child, 'name', '')}"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((length, name, f"{path.relative_to(ROOT)}:{child.lineno}"))
                    stack.append((child, name + "."))
                elif isinstance(child, ast.ClassDef):
                    stack.append((child, name + "."))
                else:
                    stack.append((child, prefix))
    return sorted(found, key=lambda row: (-row[0], row[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "src"])
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    rows = long_functions([p.resolve() for p in args.paths], args.limit)
    for length, name, where in rows:
        print(f"{length:4d}  {name}  {where}")
    print(f"{len(rows)} function(s) over {args.limit} lines")


if __name__ == "__main__":
    main()
