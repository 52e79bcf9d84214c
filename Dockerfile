# Scoring server image: the `service` package and the dependencies pinned with their hashes
# in requirements/serve.lock, nothing else (no training or benchmark code, no compilers),
# running as an unprivileged user against a registry mounted at /models.
#
#   docker build -t fraud-scoring .
#   docker run -p 50051:50051 -p 9464:9464 -v "$PWD/models:/models:ro" \
#       -v fraud-outcomes:/var/lib/fraud/outcomes -v fraud-state:/var/lib/fraud/state fraud-scoring
#
# Reproducible: the base is pinned by digest (python:3.11-slim, which was 3.11.16-slim-trixie
# at this digest) and every package by version and sha256 (scripts/lock). For a newer base
# (security fixes), replace the digest with the one `docker buildx imagetools inspect
# python:3.11-slim` prints first ("Digest:", the multi-platform index). The lock holds for any
# Python 3.11 on x86-64 Linux, so a new digest of 3.11-slim needs no new lock.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS runtime
# The OpenMP runtime, which native wheels may load (kept from when the server ran LightGBM;
# removing it needs an image build to check).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements/serve.lock requirements/serve.lock
# --require-hashes: a file whose sha256 is not in the lock fails the build. --no-deps: the
# lock is the whole set, nothing is resolved here; pip check proves that set complete.
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        --only-binary :all: -r requirements/serve.lock \
    && pip check
COPY service service
# Compiled now: the unprivileged user cannot write next to the sources (nor can anyone on
# a read-only root filesystem), and would otherwise compile them at every start.
RUN python -m compileall -q service
RUN useradd --system --uid 10001 --no-create-home fraud \
    && mkdir -p /var/lib/fraud/decisions /var/lib/fraud/outcomes /var/lib/fraud/state \
    && chown -R fraud /var/lib/fraud
USER fraud
WORKDIR /var/lib/fraud
# Decisions and reported outcomes are kept here for retraining, and the feature state (an
# LMDB file shared by the workers) across restarts: mount volumes to keep them.
VOLUME ["/var/lib/fraud/decisions", "/var/lib/fraud/outcomes", "/var/lib/fraud/state"]
# PYTHONPATH: `python -m service` and `python -m service.healthcheck` find the package from
# any working directory (it is not installed, so there is no fraud-serve script).
ENV FRAUD_REGISTRY=/models \
    FRAUD_DECISION_LOG__DIRECTORY=/var/lib/fraud/decisions \
    FRAUD_OUTCOME_LOG__DIRECTORY=/var/lib/fraud/outcomes \
    FRAUD_STATE__PATH=/var/lib/fraud/state \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1
# 50052: grpc.health.v1 alone, in plaintext, for probes that cannot use the scoring port's
# TLS (this HEALTHCHECK, Kubernetes' gRPC probes).
EXPOSE 50051 9464 50052
# grpc.health.v1 on the health port: NOT_SERVING until the champion is verified and warm
# (start-period: two minutes, as the Kubernetes startup probe), and from SIGTERM on; in
# plaintext whether or not the scoring port has TLS.
# `|| exit 1`: Docker reserves status 2, which the check uses for "no answer".
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -m service.healthcheck --port 50052 --timeout 3 || exit 1
ENTRYPOINT ["python", "-m", "service"]
CMD ["--registry", "/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464", "--health-port", "50052"]
