"""Import: ``python -c "import npguest"`` against ``python -c "import numpy"``.

Targets: at most 1.5x the wall time of importing numpy (each a fresh interpreter, best
of many interleaved runs), and the import compiles nothing: it loads no numba or
llvmlite module (``track_import_numba_modules`` is 0).
"""

from typing import ClassVar

from ._common import Paired, compare_imports, import_seconds, numba_modules_after_import


class Import(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {"import": ("npguest", "numpy")}
    ratio_repeats = 15
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0
    timeout = 300

    def measure(self, name):
        return compare_imports(*self.pairs[name], runs=self.ratio_repeats)

    def time_import_npguest(self):
        import_seconds("npguest")

    def time_import_numpy(self):
        import_seconds("numpy")

    def track_import_ratio(self):
        return self.ratio_of("import")

    def track_import_numba_modules(self):
        return numba_modules_after_import("npguest")

    track_import_ratio.unit = "ratio"
    track_import_numba_modules.unit = "modules"
