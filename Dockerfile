# stream-engine image: the worker, the proposition service and the CLI (`topics apply` …).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_engine ./stream_engine
COPY topics ./topics
# /data/journal exists in the image so that a named volume mounted there (docker-compose's
# worker-journal, shared by every worker replica) starts out owned by the worker's user.
RUN pip install . && useradd --system --uid 10001 --home-dir /app stream && mkdir -p /data/journal && chown -R stream /data

# A non-editable install puts the package in site-packages, so paths derived from the package
# location would be wrong: point them at the image's copies. The worker API keeps its loopback
# default: to publish it, set STREAM_ENGINE_API_HOST=0.0.0.0 AND STREAM_ENGINE_API_TOKEN (the
# worker refuses the first without the second), as docker-compose.yml does.
ENV STREAM_ENGINE_TOPICS_DIR=/app/topics \
    STREAM_ENGINE_DATA_DIR=/data \
    STREAM_ENGINE_STACK_DIR=/data/stack

USER stream
VOLUME ["/data"]
ENTRYPOINT ["stream-engine"]
CMD ["worker"]
