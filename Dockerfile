# syntax=docker/dockerfile:1
# Scoring server image: the wheel and its runtime dependencies only (no training extras,
# no compilers), running as an unprivileged user against a registry mounted at /models.
#
#   docker build -t fraud-scoring .
#   docker run -p 50051:50051 -p 9464:9464 -v "$PWD/models:/models:ro" \
#       -v fraud-outcomes:/var/lib/fraud/outcomes -v fraud-state:/var/lib/fraud/state fraud-scoring

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY benchmarks ./benchmarks
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
# The OpenMP runtime, which native wheels may load (kept from when the server ran LightGBM;
# removing it needs an image build to check).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --no-create-home fraud \
    && mkdir -p /var/lib/fraud/decisions /var/lib/fraud/outcomes /var/lib/fraud/state \
    && chown -R fraud /var/lib/fraud
USER fraud
WORKDIR /var/lib/fraud
# Decisions and reported outcomes are kept here for retraining, and the feature state (an
# LMDB file shared by the workers) across restarts: mount volumes to keep them.
VOLUME ["/var/lib/fraud/decisions", "/var/lib/fraud/outcomes", "/var/lib/fraud/state"]
ENV FRAUD_REGISTRY=/models \
    FRAUD_DECISION_LOG__DIRECTORY=/var/lib/fraud/decisions \
    FRAUD_OUTCOME_LOG__DIRECTORY=/var/lib/fraud/outcomes \
    FRAUD_STATE__PATH=/var/lib/fraud/state \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9464
ENTRYPOINT ["fraud-serve"]
CMD ["--registry", "/models", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464"]
