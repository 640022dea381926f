# vitcodec edge client: vitcodec-edge and the distributions it needs (numpy, pillow, onnxruntime, constriction,
# grpcio, httpx, typer, rich): no torch. Build from the repository root:
#   docker build -f deploy/edge.Dockerfile -t vitcodec-edge:0.1.0 .
#   docker run --rm --network host vitcodec-edge:0.1.0 vitcodec-edge send samples --server grpc://127.0.0.1:8001
# The encoder comes from the zoo installed with vitcodec-packages (packages/src/vitcodec/packages/zoo/), which
# holds no cloud weights: those ship in vitcodec-cloud (cloud/src/vitcodec/cloud/zoo/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR

WORKDIR /app

# one distribution per folder (docs/architecture.md): the edge's, and the ones it depends on, in one pip
# command so every vitcodec-* requirement is met from its folder
COPY common ./common
COPY codec ./codec
COPY packages ./packages
COPY protos ./protos
COPY edge ./edge
RUN pip install ./common ./codec ./packages ./protos ./edge

# the demo's sample images (Fashion-MNIST test images and drawings; samples/README.md)
COPY samples ./samples

# root on purpose: the compose demo writes its reconstruction into a bind-mounted ./demo-out
CMD ["vitcodec-edge", "--help"]
