# meshlite/app: meshlite-bench's `app` (a small HTTP/1.1, h2c and gRPC server that can call
# other services before answering) and `pause` (holds a compose pod's network namespace): the
# demo workloads of docker/compose.yaml. Built by docker/build.sh; nothing is pulled.
FROM scratch
ARG VERSION
ARG REVISION
ARG SOURCE
ADD root.tar /
LABEL org.opencontainers.image.title="meshlite-app" \
      org.opencontainers.image.description="meshlite's demo and benchmark app (meshlite-bench app, pause)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Not 1337: the capture rules exempt the proxy's uid, so an app running as 1337 would bypass
# its sidecar.
USER 1000:1000
ENTRYPOINT ["/usr/local/bin/meshlite-bench"]
CMD ["app", "--listen", "0.0.0.0:9080", "--ignore-stdin"]
