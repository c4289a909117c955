# imagebuilder in a container: run it privileged, with /dev from the host and your files in /work:
#   docker run --rm --privileged -v /dev:/dev -v "$PWD:/work" imagebuilder apply recipe.yaml --disk-image base.qcow2

# Build stage: compile the TypeScript, keep only production dependencies.
FROM debian:trixie-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime: Node.js and the tools the mount backends and sparsifiers shell out to, nothing else.
FROM debian:trixie-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="imagebuilder" \
      org.opencontainers.image.description="Make a bootable cloud disk image Kubernetes-ready without booting it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      nodejs qemu-utils qemu-system-common fuse3 util-linux libcap2-bin fdisk gdisk e2fsprogs xfsprogs btrfs-progs dosfstools \
      guestmount libguestfs-tools guestfs-tools linux-image-amd64 qemu-user-static gpg rpm ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/imagebuilder
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY bin/run.js ./bin/run.js
COPY recipes ./recipes
COPY schemas ./schemas
RUN ln -s /opt/imagebuilder/bin/run.js /usr/local/bin/imagebuilder
ENV IMAGEBUILDER_CACHE=/var/cache/imagebuilder IMAGEBUILDER_WORK_DIR=/var/tmp
VOLUME /var/cache/imagebuilder
WORKDIR /work
ENTRYPOINT ["imagebuilder"]
