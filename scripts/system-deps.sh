#!/usr/bin/env bash
# Debian packages the project needs, installed only when missing (fast when all are present).
# Build tools compile llama-cpp-python; node/npm supply real JavaScript for the demo's seeds;
# docker-compose validates docker-compose.yaml in the tests (no engine needed);
# checkstyle, clang-tidy and the JDK (javac) are linters of the static lint gate (docs/LINT_GATE.md);
# postgresql and redis-server run the production stack in the tests (tests/support/services.py);
# bubblewrap sandboxes the dynamic verification of generated code; chromium and chromium-driver
# drive the UI report tests headless.
set -euo pipefail
needed=(build-essential cmake git nodejs npm docker-compose checkstyle clang-tidy default-jdk-headless postgresql redis-server bubblewrap chromium chromium-driver)
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# node and npm may come from outside Debian (e.g. NodeSource or nvm): accept working commands.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
# Likewise a JDK from elsewhere (e.g. Temurin) serves javac.
if command -v java >/dev/null && command -v javac >/dev/null; then
  missing=("${missing[@]/default-jdk-headless}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
