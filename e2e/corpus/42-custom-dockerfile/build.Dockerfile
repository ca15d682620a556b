# A Dockerfile with another name (-f) and its own build.Dockerfile.dockerignore,
# which wins over .dockerignore; labels from the command line.
ARG BASE
FROM ${BASE}
COPY . /ctx/
LABEL in.dockerfile=yes
