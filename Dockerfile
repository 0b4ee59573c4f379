# One image for every process: web (default CMD), worker and beat (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The code stays owned by root; the service runs as an unprivileged user that cannot change it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -c constraints.txt . \
    # The metrics directory web and worker share (docker-compose.yml): a new named volume
    # takes this owner, so the unprivileged user can write to it.
    && mkdir -p /metrics && chown app:app /metrics

USER app
EXPOSE 8000
CMD ["uvicorn", "worker.web:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
