# meshlite/control: the control plane (xDS + CA, monitoring, injection webhook).
# Built by docker/build.sh, which makes root.tar and writable.tar (see there); nothing is pulled.
FROM scratch
ARG VERSION
ARG REVISION
ARG SOURCE
ADD root.tar /
ADD writable.tar /
LABEL org.opencontainers.image.title="meshlite-control" \
      org.opencontainers.image.description="meshlite's control plane: config, xDS, CA, sidecar injection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Logs go to `docker logs` / `kubectl logs`: no colour codes.
ENV NO_COLOR=1
USER 1337:1337
# xDS + CA (TLS), monitoring, injection webhook
EXPOSE 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/meshlite-control"]
CMD ["serve"]
