# DuckMesh: one image for every role (api, coordinator, compactor, up, and the CLI).
#   docker build -t duckmesh .
#   docker run --rm -p 8080:8080 duckmesh up          # all in one, embedded PostgreSQL (a demo)
# docker-compose.yml runs the real thing: PostgreSQL + S3 (MinIO) + api/coordinator/compactor + monitoring.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DUCKMESH_HTTP_ADDR=0.0.0.0:8080 \
    DUCKMESH_STATE_DIR=/var/lib/duckmesh \
    DUCKMESH_LOG_FORMAT=json

WORKDIR /opt/duckmesh
COPY pyproject.toml README.md ./
COPY src ./src
# Run-time dependencies only (no dev tools in the image).
RUN pip install --no-compile . \
    && useradd --system --uid 10001 --home-dir /var/lib/duckmesh --create-home duckmesh

USER duckmesh
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/v1/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["duckmesh"]
CMD ["api"]
