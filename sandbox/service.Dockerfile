# The sandbox *service* image: `retool sandbox serve` on a CPU host, its jupyter kernels jailed with
# bubblewrap inside the container. Not built or run on a cluster by us (see docs/deployment.md).
#
#   docker build -f sandbox/service.Dockerfile -t retool-sandbox-service:latest .   (from the repository root)
#   docker run --rm -p 8765:8765 -e RETOOL_SANDBOX_TOKEN=... \
#       --security-opt seccomp=unconfined --security-opt apparmor=unconfined --cap-add SYS_ADMIN \
#       retool-sandbox-service:latest
#
# The jail needs what bubblewrap needs: user namespaces (or CAP_SYS_ADMIN) and a seccomp profile that
# lets it create them; the cells themselves run unprivileged, with no network, under the limits given
# on the command line (--memory-mb, --timeout). The service refuses to listen beyond loopback without
# a token: set RETOOL_SANDBOX_TOKEN (space-separated for several).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libseccomp2 tini \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*

WORKDIR /opt/retool
COPY pyproject.toml README.md ./
COPY retool ./retool
RUN pip install --no-cache-dir ".[serve]"

RUN useradd --uid 1000 --create-home --shell /bin/sh retool
USER retool
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health')"
ENTRYPOINT ["tini", "--", "retool", "sandbox", "serve", "--host", "0.0.0.0", "--port", "8765"]
CMD ["--size", "32", "--sandbox", "jupyter"]
