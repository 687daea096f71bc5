"""Every built-in method, in every setting the conformance suite checks, trained one tiny epoch with
``train.compile_objective=true``: each must train with its objective compiled (no eager fallback, no
error), on the device and in the mode given.

    python scripts/compile_sweep.py [--device cpu|cuda] [--mode default|reduce-overhead] [METHOD ...]

The test suite compiles a few methods (tests/engine/test_compile_objective.py, kd on inductor, CRD on
inductor and across two processes); this compiles all of them, which takes minutes, so it runs by
hand and in ``scripts/bench_gpu.sh`` rather than in CI. It exits non-zero when any method fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the conformance suite's list of cases

from kdzoo.engine import build_trainer  # noqa: E402
from kdzoo.paths import using_cache  # noqa: E402
from kdzoo.registry import registry  # noqa: E402
from kdzoo.testing import Case, tiny_config  # noqa: E402
from tests.methods.test_every_method_conformance import CASES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead"])
    parser.add_argument("methods", nargs="*", help="only these methods (default: every one)")
    args = parser.parse_args()
    # one run per method and setting: the conformance suite's full-run case of each
    runs = {(c.method, c.settings): c.pair for c in CASES if c.check == "checkpoint"}
    extra = ("train.compile_objective=true", f"train.compile_mode={args.mode}", f"train.device={args.device}")
    root, ran, failed = Path(tempfile.mkdtemp(prefix="kdzoo-compile-sweep-")), 0, 0
    with using_cache(root / "cache"):
        for i, ((method, settings), pair) in enumerate(runs.items()):
            if args.methods and method not in args.methods:
                continue
            case = Case(method, "checkpoint", pair, (*settings, *extra, "train.epochs=1"))
            label = " ".join([method, *settings])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    build_trainer(tiny_config(case, root), registry(), root / f"run{i}", show_progress=False).fit()
                    fallbacks = [str(w.message) for w in caught if "compile_objective" in str(w.message)]
                except Exception as exc:  # every method's outcome is reported
                    fallbacks = [traceback.format_exception_only(exc)[-1].strip()]
            ran, failed = ran + 1, failed + bool(fallbacks)
            print(f"{label}: " + ("compiled" if not fallbacks else f"FAILED: {fallbacks[0][:300]}"), flush=True)
    print(f"{ran - failed} of {ran} runs compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
