# Runnable image of the gateway on its embedded defaults: RTMP 1935, HTTP 8080.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY matrix ./matrix
RUN pip install --no-cache-dir . && useradd --system gateway
USER gateway
EXPOSE 1935 8080
ENTRYPOINT ["gateway"]
CMD ["serve"]
