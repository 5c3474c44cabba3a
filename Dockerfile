# syntax=docker/dockerfile:1
# The raymlops image: Ray's own image of the Ray version raymlops is tested with, plus raymlops, its
# Ray job entrypoints (jobs/) and the ready pipeline files (pipelines/). The KubeRay manifests in
# cluster/kuberay/ and the `ray up` config in cluster/launcher/ run it.
#
# Build and push from the repository root (BuildKit, the default builder of Docker 23+):
#   docker build -t ghcr.io/raymlops/raymlops:0.1.0-ray2.60.0-py311 .
#   docker push ghcr.io/raymlops/raymlops:0.1.0-ray2.60.0-py311
# GPU variant: the same on Ray's CUDA image, with TensorFlow's CUDA libraries added:
#   docker build --build-arg VARIANT=-gpu --build-arg EXTRA_PACKAGES='tensorflow[and-cuda]' \
#     -t ghcr.io/raymlops/raymlops:0.1.0-ray2.60.0-py311-gpu .
#
# Tag convention: <raymlops version>-ray<Ray version>-py<Python><variant>. The Ray version in the tag,
# RAY_VERSION below, the lower bound of `ray[...]` in pyproject.toml and `rayVersion` in every KubeRay
# manifest must be one and the same; tests/cluster/test_image.py checks that they are.
#
# Why these choices:
# - FROM rayproject/ray: Ray's own build of the exact Ray version, with the `ray` user (uid 1000, gid
#   100 `users`) that KubeRay and the autoscaler expect, and Python in /home/ray/anaconda3, which that
#   user owns: nothing here needs root, so no layer runs as root.
# - raymlops is built into a wheel in a first stage and installed from it, so the final image holds
#   no copy of the source that could shadow the installed package; Ray is held at RAY_VERSION by a
#   constraint, so resolving raymlops's dependencies can never swap the Ray the tag names.
# - The build fails unless the installed Ray and Python are the ones the tag names.
# - Caches and config that libraries write under $HOME go to /tmp instead, so the containers run with
#   a read-only root filesystem (the manifests mount emptyDir volumes at /tmp and /tmp/ray).

ARG RAY_VERSION=2.60.0
# The project's Python (tool.mypy.python_version in pyproject.toml) as Ray's image tags spell it.
ARG PYTHON_TAG=py311
# "" for the CPU image, "-gpu" for Ray's CUDA image.
ARG VARIANT=""

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT} AS wheel
USER 1000:100
COPY --chown=1000:100 pyproject.toml README.md /home/ray/src/
COPY --chown=1000:100 raymlops /home/ray/src/raymlops
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels /home/ray/src

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}
ARG RAY_VERSION
ARG PYTHON_TAG
ARG VARIANT
# Optional extras of pyproject.toml to install, comma-separated. Only the `dev` extra (test tools)
# exists today, and the image does not need it; `mlflow` (issue 16) belongs here once pyproject.toml
# defines it: EXTRAS=mlflow. tests/cluster/test_image.py fails when a runtime extra is missing here
# or a name here is not an extra of pyproject.toml.
ARG EXTRAS="mlflow"
# More pip requirements for a variant, e.g. 'tensorflow[and-cuda]' for the GPU image.
ARG EXTRA_PACKAGES=""

LABEL org.opencontainers.image.title="raymlops" \
      org.opencontainers.image.description="raymlops on rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}" \
      org.opencontainers.image.source="https://github.com/raymlops/raymlops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.ray.version="${RAY_VERSION}"

USER 1000:100
RUN --mount=type=bind,from=wheel,source=/home/ray/wheels,target=/tmp/wheels \
    set -eu; \
    echo "ray==${RAY_VERSION}" > /tmp/constraints.txt; \
    set -- /tmp/wheels/raymlops-*.whl; \
    set -f; \
    pip install --no-cache-dir -c /tmp/constraints.txt "$1${EXTRAS:+[$EXTRAS]}" ${EXTRA_PACKAGES}; \
    rm -f /tmp/constraints.txt; \
    python -c "import sys, ray, raymlops; \
v = f'py{sys.version_info[0]}{sys.version_info[1]}'; \
assert ray.__version__ == '${RAY_VERSION}', f'Ray {ray.__version__} installed, the tag says ${RAY_VERSION}'; \
assert v == '${PYTHON_TAG}', f'Python {v}, the tag says ${PYTHON_TAG}'"; \
    raymlops --help > /dev/null

COPY --chown=1000:100 jobs /home/ray/raymlops/jobs
COPY --chown=1000:100 pipelines /home/ray/raymlops/pipelines

ENV RAYMLOPS_CACHE=/tmp/raymlops-cache \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    MPLCONFIGDIR=/tmp/.config/matplotlib \
    KERAS_HOME=/tmp/.keras \
    PYTHONUNBUFFERED=1

# The image's non-root `ray` user, by number so that the kubelet can check runAsNonRoot.
USER 1000:100
WORKDIR /home/ray
