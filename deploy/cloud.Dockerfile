# vitcodec cloud server, CPU. Build from the repository root:
#   docker build -f deploy/cloud.Dockerfile -t vitcodec-cloud:0.1.0 .
# Serves the zoo shipped in vitcodec-packages and vitcodec-cloud (or a repository mounted at VITCODEC_MODEL_REPO)
# on 8000 (HTTP) and 8001 (gRPC). Every `vitcodec-cloud serve` flag also reads a VITCODEC_* variable
# (docs/api.md, "Settings").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR

WORKDIR /app

# torch first, from the CPU wheel index (the default index's Linux wheels pull in the CUDA libraries);
# the pins are models/pyproject.toml's pins, which the next install then finds satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# the server's distribution and the ones it depends on (docs/architecture.md), one pip command; the zoo is
# vitcodec-packages' package data (manifests, edge files) and vitcodec-cloud's (its weights.pt, classifier.onnx)
COPY common ./common
COPY codec ./codec
COPY packages ./packages
COPY protos ./protos
COPY edge ./edge
COPY models ./models
COPY cloud ./cloud
# no training stack (compressai is vitcodec-models[train] only), so numpy resolves to 2.x
RUN pip install ./common ./codec ./packages ./protos ./edge ./models ./cloud

RUN useradd --create-home --uid 10001 vitcodec
USER 10001

EXPOSE 8000 8001
# readiness (models loaded), not liveness: the compose `edge` service waits for it
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]

CMD ["vitcodec-cloud", "serve", "--model", "fmnist-q2", "--http-port", "8000", "--grpc-port", "8001"]
