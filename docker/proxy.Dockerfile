# meshlite/proxy: the sidecar, and the init container's `meshlite-proxy init` (iptables-nft).
# Built by docker/build.sh, which makes root.tar and writable.tar (see there); nothing is pulled.
FROM scratch
ARG VERSION
ARG REVISION
ARG SOURCE
ADD root.tar /
ADD writable.tar /
LABEL org.opencontainers.image.title="meshlite-proxy" \
      org.opencontainers.image.description="meshlite's sidecar proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Istio's proxy uid/gid, which the capture rules exempt. The init container runs as root.
# Logs go to `docker logs` / `kubectl logs`: no colour codes.
ENV NO_COLOR=1
USER 1337:1337
# outbound, inbound, admin (loopback only), metrics, health
EXPOSE 15001 15006 15020 15021
ENTRYPOINT ["/usr/local/bin/meshlite-proxy"]
