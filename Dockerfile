# Runnable image of the gateway on its embedded defaults: RTMP 1935, HTTP 8080.

# The browser players of the player page (jsmpeg, mpegts.js) come from the npm registry, pinned
# by package-lock.json, never vendored; only node_modules goes into the final image.
FROM node:20-slim AS players
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY matrix ./matrix
COPY --from=players /build/node_modules ./node_modules
# where /_static/ finds the players (gateway/static/README.md)
ENV GATEWAY_ASSETS_DIR=/app
RUN pip install --no-cache-dir . && useradd --system gateway
USER gateway
EXPOSE 1935 8080
ENTRYPOINT ["gateway"]
CMD ["serve"]
