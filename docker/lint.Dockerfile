# The lint sidecar: the static verification gate over HTTP (POST /v1/lint, GET /healthz), with
# every linter at the versions the project pins. Build from the project root:
#   docker build -f docker/lint.Dockerfile -t infinisynth-lint .
FROM python:3.11-slim-bookworm

# Java (javac + Checkstyle), Clang-Tidy, Node for ESLint: Debian's packages, as on the dev machines;
# bubblewrap and util-linux (setpriv) for /v1/execute's sandbox (user namespaces must be allowed),
# and Debian's python3-minimal: the sandbox sees only /usr, so tests run with /usr/bin/python3 (and
# /usr/bin/node), not this image's /usr/local Python.
RUN apt-get update \
 && apt-get install -y --no-install-recommends checkstyle clang-tidy default-jdk-headless nodejs npm curl bubblewrap util-linux python3-minimal \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Python linters and the service's libraries at the project's pins (requirements.txt as constraints).
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -c /tmp/requirements.txt \
      pylint sqlfluff sqlfluffrs tree-sitter tree-sitter-language-pack fastapi uvicorn pydantic pyarrow markdown-it-py jinja2 httpx \
 && rm /tmp/requirements.txt
# ESLint and its parsers from the lock file.
COPY tools/eslint/package.json tools/eslint/package-lock.json tools/eslint/
RUN npm ci --prefix tools/eslint --no-audit --no-fund --omit=dev
COPY include/lint include/lint
COPY pyproject.toml ./
COPY src src
RUN pip install --no-cache-dir --no-deps -e .

# Linters run as an unprivileged user with no home of value; samples live in private temp folders.
RUN useradd --create-home --shell /usr/sbin/nologin lint
USER lint
ENV PYTHONDONTWRITEBYTECODE=1
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD curl -fsS http://127.0.0.1:8787/healthz || exit 1
CMD ["python", "-m", "infinisynth.verify.service", "--host", "0.0.0.0", "--port", "8787"]
