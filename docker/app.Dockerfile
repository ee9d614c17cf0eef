# fedmia's app image: Flower's official SuperExec image — the process that runs ServerApps for a
# SuperLink, or ClientApps for a SuperNode, started with `--isolation process` — plus fedmia's
# dependencies and CLI. The SuperLink and the SuperNodes run Flower's own images unchanged
# (docker/compose.yml). Build from the repository root (compose does): the context is `..`.
ARG FLWR_VERSION=1.41.0
FROM flwr/superexec:${FLWR_VERSION}

WORKDIR /app
# the SuperExec polls for a message's task every 1 s by default before it starts the app's
# process; 0.1 s as fedmia's loopback deployment uses (fedmia/deploy.py, tested)
ENV PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1

# 1. Dependencies only (torch, smp, opacus, ...): this layer is rebuilt when pyproject.toml
#    changes, not when the source does. Empty package stubs let pip resolve the project; Ray
#    (flwr's `simulation` extra) is left out: no simulation runs in a deployment.
COPY --chown=app:app pyproject.toml README.md ./
RUN mkdir -p fedmia strategies && touch fedmia/__init__.py strategies/__init__.py \
 && sed -i 's/"flwr\[simulation,dp\]/"flwr[dp]/' pyproject.toml \
 && python -m pip install . \
 && python -m pip uninstall -y fedmia

# 2. The project: a source edit rebuilds only these layers.
COPY --chown=app:app fedmia ./fedmia
COPY --chown=app:app strategies ./strategies
COPY --chown=app:app scenarios ./scenarios
RUN python -m pip install --no-deps -e .

ENTRYPOINT ["flower-superexec"]
