# Production image: pinned dependencies, non-root, migrations shipped alongside the app.
#   docker build -t forge-realtime .
#   docker run --rm -e DATABASE_URL=... forge-realtime python -m app migrate
#   docker run -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... forge-realtime
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /srv --no-create-home --shell /usr/sbin/nologin app

WORKDIR /srv

# Dependencies first, in their own layer, so editing app code does not reinstall them:
# a placeholder package lets pip resolve the project's dependencies against the pins. The
# publisher package (clients/python: the wire rules the service checks with) is one of them, on
# no index: installed from its directory in the same call, which is what satisfies its name. The
# `tracing` extra (OpenTelemetry) is in the image, so that TRACING=true alone turns it on.
COPY pyproject.toml constraints.txt ./
COPY clients/python/ clients/python/
RUN mkdir app && touch app/__init__.py \
 && pip install -c constraints.txt ./clients/python '.[tracing]' \
 && pip uninstall -y forge-realtime \
 && rm -rf app build *.egg-info clients

COPY app/ app/
COPY migrations/ migrations/
COPY alembic.ini ./
RUN pip install --no-deps -c constraints.txt . \
 && rm -rf build *.egg-info \
 && mkdir -p var && chown app:app var

# app.db.run_migrations finds alembic.ini here even though the package runs from site-packages.
ENV ALEMBIC_CONFIG=/srv/alembic.ini \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/srv/var

USER app
EXPOSE 8000

# slim has no curl; urlopen raises on connection errors and non-2xx answers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "app", "serve"]
