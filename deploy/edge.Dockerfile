# vitcodec edge client: the base distribution only (numpy, pillow, onnxruntime, constriction, grpcio, httpx,
# typer, rich): no torch. Build from the repository root:
#   docker build -f deploy/edge.Dockerfile -t vitcodec-edge:0.1.0 .
#   docker run --rm --network host vitcodec-edge:0.1.0 vitcodec-edge send samples --server grpc://127.0.0.1:8001
# The encoder comes from the zoo installed with the package (packages/zoo/, package data).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR

WORKDIR /app

# every package folder must be present to build (pyproject maps them all); only the base dependencies install
COPY pyproject.toml README.md ./
COPY vitcodec ./vitcodec
COPY codec ./codec
COPY packages ./packages
COPY models ./models
COPY edge ./edge
COPY cloud ./cloud
COPY protos ./protos
COPY demo ./demo
RUN pip install .

# the demo's sample images (Fashion-MNIST test images and drawings; samples/README.md)
COPY samples ./samples

# root on purpose: the compose demo writes its reconstruction into a bind-mounted ./demo-out
CMD ["vitcodec-edge", "--help"]
