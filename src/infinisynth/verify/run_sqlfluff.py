"""SQLFluff in one child process: lint files dialect after dialect, each only while no dialect parsed it.

    python -I run_sqlfluff.py CONFIG DIALECT,... FILE...
        -> one JSON line per dialect tried: {"dialect", "records": what `sqlfluff lint --format json` prints}

The gate used to start ``sqlfluff lint`` once per dialect (up to six processes per batch, each paying
about 0.4 s of start-up and loading its dialect again for every file). Here SQLFluff is loaded once, each
dialect's configuration and linter are built once, and every dialect lints what the earlier ones
could not parse, with the same calls the command line makes: ``FluffConfig.from_root`` on the given
config with local configuration ignored and the dialect overridden, then ``Linter.lint_paths`` over
our file names. A file leaves the loop as soon as a dialect reports nothing for it.

Run as a script with ``python -I`` (no ``PYTHONPATH``, no user site), not as part of the package.
"""

import json
import os
import sys

from sqlfluff.core import FluffConfig, Linter


class _OneConfig(FluffConfig):
    """With local configuration ignored, every file's configuration is the root's (defaults, the given
    file, the overrides): ``lint_paths`` gets a copy instead of loading it, and its dialect, again
    for every file (a third of the time for short samples)."""

    def make_child_from_path(self, path: str, require_dialect: bool = True) -> FluffConfig:
        return self.copy()


def main(argv: list[str]) -> None:
    config_path, dialects, remaining = argv[0], argv[1].split(","), list(argv[2:])
    for dialect in dialects:
        config = _OneConfig.from_root(
            extra_config_path=config_path, ignore_local_config=True, overrides={"dialect": dialect}, require_dialect=False
        )
        result = Linter(config=config).lint_paths(
            tuple(remaining), ignore_non_existent_files=False, ignore_files=True, processes=1, retain_files=False
        )
        records = result.as_records()
        print(json.dumps({"dialect": dialect, "records": records}), flush=True)
        failing = {os.path.basename(record["filepath"]) for record in records if record["violations"]}
        remaining = [name for name in remaining if name in failing]
        if not remaining:
            break


if __name__ == "__main__":
    main(sys.argv[1:])
