# The tapeline image: one process per role (`tapeline up --only <role>`), run as a non-root user.
FROM python:3.11-slim

# torch from PyTorch's CPU index: the default index serves the CUDA build (several GB more).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

RUN useradd --create-home --uid 10001 tapeline
WORKDIR /app
COPY --chown=tapeline:tapeline . .
RUN pip install --no-cache-dir . && mkdir -p /app/.tapeline && chown tapeline:tapeline /app/.tapeline

USER tapeline
ENV TAPELINE_METRICS_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 9464
# Healthy while the metrics endpoint answers: run each role with `--metrics-port 9464` (its own container).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"
CMD ["tapeline", "up", "--metrics-port", "9464"]
