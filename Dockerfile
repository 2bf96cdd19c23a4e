# roadfeed service image. Build: docker build -t roadfeed .

# The web page's assets: npm packages pinned by package-lock.json, bundled by esbuild.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web ./web
RUN mkdir -p feed && node web/build.mjs

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ROADFEED_SQL_DIR=/app/sql

WORKDIR /app
COPY requirements/runtime.txt ./requirements/runtime.txt
# Exactly the locked versions, each checked against its hash; then the project itself.
RUN pip install --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY feed ./feed
COPY --from=web /src/feed/webassets ./feed/webassets
COPY collectors ./collectors
COPY exporters ./exporters
COPY sql ./sql
RUN pip install --no-deps --no-build-isolation . && useradd --system --home-dir /app roadfeed
USER roadfeed

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["roadfeed", "run", "--config", "/etc/roadfeed/roadfeed.toml", "--host", "0.0.0.0", "--port", "8080"]
