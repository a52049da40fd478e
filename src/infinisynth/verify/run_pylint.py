"""Run pylint so that a sample can resolve imports only to the standard library (and other samples'
files, which it cannot name: they carry random tokens).

astroid follows a sample's imports by parsing the imported modules' source, found on ``sys.path``.
With the host's site-packages visible, a verdict would depend on what this machine has installed
(the sidecar image has different packages from an Airflow worker) and big libraries would be parsed
for every batch. So once pylint itself is loaded, ``sys.path`` is cut down to the standard library:
third-party imports become unresolvable (``import-error`` is disabled) and inference stops there.
Nothing is ever imported from a sample: astroid only parses.

Run as a script with ``python -I`` (no ``PYTHONPATH``, no user site), not as part of the package.
"""

import sys
import sysconfig
from collections.abc import Sequence

import isort  # noqa: F401  (pylint imports these lazily; load them while site-packages is visible)
import tomlkit  # noqa: F401
from pylint.lint import PyLinter, Run


def main(argv: list[str]) -> None:
    paths = sysconfig.get_paths()
    stdlib = [paths["stdlib"], paths["platstdlib"], f"{paths['platstdlib']}/lib-dynload"]
    check = PyLinter.check

    def check_with_stdlib_only(self: PyLinter, files_or_modules: Sequence[str]) -> None:
        sys.path[:] = stdlib
        check(self, files_or_modules)

    PyLinter.check = check_with_stdlib_only  # type: ignore[method-assign]
    Run(argv, exit=False)


if __name__ == "__main__":
    main(sys.argv[1:])
