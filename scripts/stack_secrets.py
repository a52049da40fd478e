#!/usr/bin/env python3
"""The production stack's secrets: generate a fresh ``.env``, and refuse to start without them.

    python3 scripts/stack_secrets.py generate [--env-file .env]   # once; never overwrites
    python3 scripts/stack_secrets.py check                        # the stack's first service
    python3 scripts/stack_secrets.py admin-passwords FILE         # the UI's admin password file

Standard library only: it runs on a fresh machine before anything is installed, and in the
Airflow image before Airflow starts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATE_HINT = "run `make env` (python3 scripts/stack_secrets.py generate) for a fresh .env with strong values"

# name -> (how it is made, the shortest value accepted)
SECRETS = {
    "AIRFLOW_JWT_SECRET": (lambda: secrets.token_urlsafe(48), 32),
    "AIRFLOW_FERNET_KEY": (lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(), 44),
    "AIRFLOW_ADMIN_PASSWORD": (lambda: secrets.token_urlsafe(18), 16),
    "POSTGRES_PASSWORD": (lambda: secrets.token_urlsafe(24), 16),
    "MINIO_ROOT_USER": (lambda: f"infinisynth-{secrets.token_hex(6)}", 8),
    "MINIO_ROOT_PASSWORD": (lambda: secrets.token_urlsafe(32), 16),
}
# Values anyone reading this repository (or its history) knows.
KNOWN_DEFAULTS = frozenset(
    {"change-me", "changeme", "infinisynth", "infinisynth-secret", "airflow", "admin", "minioadmin", "password", "secret"}
)


def problems(env: dict[str, str]) -> list[str]:
    """What is wrong with the secrets in ``env``: one line per secret, empty when all are good."""
    found = []
    for name, (_, shortest) in SECRETS.items():
        value = env.get(name, "")
        if not value:
            found.append(f"{name} is not set")
        elif value.lower() in KNOWN_DEFAULTS:
            found.append(f"{name} is a published default ({value!r})")
        elif len(value) < shortest:
            found.append(f"{name} is too short ({len(value)} characters; at least {shortest})")
        elif name == "AIRFLOW_FERNET_KEY" and not _is_fernet_key(value):
            found.append(f"{name} is not a Fernet key (32 url-safe base64-encoded bytes)")
    return found


def _is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (binascii.Error, ValueError):
        return False


def generate(env_file: Path, template: Path = REPO / ".env.example") -> None:
    """Write ``env_file`` from the template with every secret freshly generated (mode 600)."""
    if env_file.exists():
        raise SystemExit(f"{env_file} exists; not overwriting it (delete it first to start over)")
    lines = []
    for line in template.read_text().splitlines():
        name = line.split("=", 1)[0].strip()
        lines.append(f"{name}={SECRETS[name][0]()}" if name in SECRETS and "=" in line else line)
    missing = set(SECRETS) - {line.split("=", 1)[0] for line in lines}
    lines += [f"{name}={SECRETS[name][0]()}" for name in sorted(missing)]
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(lines) + "\n")
    print(f"wrote {env_file} with fresh secrets (the admin password is AIRFLOW_ADMIN_PASSWORD in it)")


def admin_passwords(path: Path, env: dict[str, str]) -> None:
    """The simple auth manager's password file for the admin user, from the environment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({env.get("AIRFLOW_ADMIN_USER") or "admin": env["AIRFLOW_ADMIN_PASSWORD"]}))
    path.chmod(0o644)  # read by the api-server's (non-root) user; the volume is not published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write a fresh .env (never overwrites)")
    make.add_argument("--env-file", type=Path, default=REPO / ".env")
    commands.add_parser("check", help="exit 1, saying why, unless every secret is set and strong")
    passwords = commands.add_parser("admin-passwords", help="write the admin password file")
    passwords.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    if args.command == "generate":
        generate(args.env_file)
    elif args.command == "check":
        found = problems(dict(os.environ))
        if found:
            print("The stack will not start with these secrets:", *(f"  - {p}" for p in found), GENERATE_HINT, sep="\n", file=sys.stderr)
            return 1
        print("secrets: all set")
    else:
        admin_passwords(args.path, dict(os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
