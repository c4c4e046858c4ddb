# The controller image referenced by manifests/base (hedgerow/hedgerow:0.1.0):
#   docker build -t hedgerow/hedgerow:0.1.0 . && kind load docker-image hedgerow/hedgerow:0.1.0
# The same image runs `hedgerow agent run` on Docker hosts. Needs a registry for the base
# image; the test machines have none, so CI does not build it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY core ./core
COPY controller ./controller
COPY edge-agent ./edge-agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["hedgerow"]
CMD ["controller", "--help"]
