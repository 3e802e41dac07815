"""Run one benchmark module's ``main`` entry: ``python -m bench.entry bench.bench_jobs --quick``.

``main`` may take the argument list or read ``sys.argv`` itself, and may return anything: an int is the
exit status, other values (a results dict, None) mean success.
"""

from __future__ import annotations

import importlib
import inspect
import runpy
import sys


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m bench.entry MODULE [ARGS...]", file=sys.stderr)
        return 2
    name, args = sys.argv[1], sys.argv[2:]
    sys.argv = [name, *args]
    module = importlib.import_module(name)
    entry = getattr(module, "main", None)
    if entry is None:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
        return 0
    result = entry(args) if inspect.signature(entry).parameters else entry()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
