# vitcodec cloud server, NVIDIA GPU (torch on CUDA, classifier forward in onnxruntime-gpu). Build from the
# repository root:
#   docker build -f deploy/cloud-gpu.Dockerfile -t vitcodec-cloud-gpu:0.1.0 .
# Run with the NVIDIA container toolkit: `docker run --gpus all -p 8000:8000 -p 8001:8001 vitcodec-cloud-gpu:0.1.0`
# (compose: `docker compose --profile gpu up cloud-gpu edge-gpu`; Kubernetes: deploy/k8s/deployment-gpu.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# PyPI's Linux torch wheels are the CUDA builds (CUDA and cuDNN come as nvidia-* wheels; only the driver is
# the host's). Same pins as models/pyproject.toml.
RUN pip install torch==2.14.1 torchvision==0.29.1

# the server's distribution and the ones it depends on (docs/architecture.md), one pip command; the zoo is
# vitcodec-packages' package data (manifests, edge files) and vitcodec-cloud's (its weights.pt, classifier.onnx)
COPY common ./common
COPY codec ./codec
COPY packages ./packages
COPY protos ./protos
COPY edge ./edge
COPY models ./models
COPY cloud ./cloud
# No training stack (no compressai, numpy 2.x). onnxruntime-gpu is vitcodec-cloud[gpu].
# It provides the same `onnxruntime` module as the base dependency onnxruntime, so the CPU build goes first,
# then the GPU build comes in with its own CUDA/cuDNN wheels.
RUN pip install ./common ./codec ./packages ./protos ./edge ./models ./cloud \
 && pip uninstall -y onnxruntime \
 && pip install 'onnxruntime-gpu[cuda,cudnn]>=1.19'

RUN useradd --create-home --uid 10001 vitcodec
USER 10001

EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]

CMD ["vitcodec-cloud", "serve", "--model", "fmnist-q2", "--http-port", "8000", "--grpc-port", "8001", "--device", "cuda", "--backend", "onnxruntime"]
