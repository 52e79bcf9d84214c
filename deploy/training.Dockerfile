# Retraining image: `fraud-train` (the `training` package and the `service` code it shares:
# one feature definition) with the dependencies pinned with their hashes in
# requirements/train.lock, which holds every package of the server's lock at the server's
# version. It runs `fraud-train retrain --watch` beside the servers
# (deploy/kubernetes/overlays/scaled/retrain.yaml), or any other fraud-train command.
#
#   docker build -f deploy/training.Dockerfile -t fraud-scoring-training .
#
# The build context is the repository root; deploy/training.Dockerfile.dockerignore (read by
# BuildKit beside this file) lets in only what is copied below. Base pinned by digest, as
# the server's Dockerfile (see there for how to move it).

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS training
# LightGBM's wheel links the OpenMP runtime.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements/train.lock requirements/train.lock
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        --only-binary :all: -r requirements/train.lock \
    && pip check
COPY service service
COPY training training
RUN python -m compileall -q service training
RUN useradd --system --uid 10001 --no-create-home fraud
USER fraud
WORKDIR /tmp
# matplotlib (the evaluation's plots) wants a writable configuration directory; the root
# filesystem is read-only in the pod, /tmp is not.
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
ENTRYPOINT ["python", "-m", "training.cli"]
CMD ["--help"]
