"""``python -m course_lib.bench [name ...]``: run every benchmark module (or those named) on the
course's device, print each one's table and save its results under bench_results/."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from course_lib import bench, runtime


def main(names: list[str]) -> None:
    available = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(available) or 'none yet'}")
    device = runtime.device()
    for name in names or available:
        module = importlib.import_module(f"course_lib.bench.{name}")
        print(f"== {name} on {bench.device_name(device)}")
        results = module.run(device)
        print(f"saved {bench.save(name, results)}")
    if not available:
        print("no benchmark modules yet")


if __name__ == "__main__":
    main(sys.argv[1:])
