"""Every file a kdzoo command writes under FOLDER, and how: prints each path opened for writing in
place or as a temporary file renamed over it afterwards, one ``written in: PATH`` line each (see test_faults).

usage: python tests/write_audit.py FOLDER -- KDZOO-ARGS ...  (several commands: separated by --)
"""

import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main(folder: Path, commands: list[list[str]]) -> None:
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        if writing:
            opened.append(os.path.abspath(os.fsdecode(path)))

    sys.addaudithook(watch)
    from kdzoo.cli import main as kdzoo

    for command in commands:
        try:
            kdzoo(command, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    inside = sorted({p for p in opened if Path(p).is_relative_to(folder)})
    print("\n".join(f"written in: {path}" for path in inside))


if __name__ == "__main__":
    folder, rest = Path(sys.argv[1]).resolve(), sys.argv[3:]  # argv[2] is the first "--"
    commands, current = [], []
    for arg in rest:
        if arg == "--":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    main(folder, [*commands, current])
