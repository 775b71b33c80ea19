#!/usr/bin/env bash
# Build Dockerfile.cuda with podman over a locally made stand-in for the CUDA base image
# (the real nvidia/cuda image cannot be pulled here) and run gpustream inside it:
#   --version; info (CPU fallback, exit 0); info --engine cuda (exit 1 without a GPU);
#   the default command on a small Nexmark spec; a followed JSONL source with /metrics
#   published and the HEALTHCHECK run, then `podman stop` (SIGTERM): exit 143, the
#   summary printed, the sink file closed.
# The stand-in is Debian bookworm (debootstrap minbase) with a user `ubuntu` of uid 1000,
# as on the ubuntu24.04 CUDA images; it has no CUDA libraries, so gpustream runs on the CPU.
# Needs root, podman and debootstrap (apt-get install podman debootstrap), a Debian mirror
# and PyPI. Not part of `make test`: it takes minutes and root tools.
#   usage: sudo docker/smoke_build.sh        (GPUSTREAM_SMOKE_DIR: work folder, kept)
set -euo pipefail

# crun refuses hosts with cgroup v1 and v2 mounted side by side ("hybrid mode"), as this
# machine has: run in a mount namespace of our own with the cgroup2 mount hidden.
if [ -z "${GPUSTREAM_SMOKE_NS:-}" ] && mountpoint -q /sys/fs/cgroup/unified; then
    exec unshare --mount --propagation private env GPUSTREAM_SMOKE_NS=1 "$0" "$@"
fi
if [ -n "${GPUSTREAM_SMOKE_NS:-}" ]; then
    umount /sys/fs/cgroup/unified
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPUSTREAM_SMOKE_DIR:-/var/tmp/gpustream-smoke}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/gpustream-standin-cuda:bookworm
IMAGE=localhost/gpustream:smoke
PORT=19108
PODMAN=(podman --storage-driver vfs)
NAME=gpustream-smoke-follow

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }
cleanup() { "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mkdir -p "$WORK"

# This machine reaches PyPI through a TLS proxy with its own CA: the stand-in carries the
# host's CA bundle and points pip at it (PIP_CERT), as a site's own base image would.
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if ! "${PODMAN[@]}" image exists "$BASE"; then
    step "stand-in base $BASE: debootstrap --variant=minbase bookworm, user ubuntu (uid 1000)"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap (see $WORK/debootstrap.log)"
    chroot "$rootfs" useradd --create-home --uid 1000 --shell /bin/bash ubuntu
    rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/archives/"*.deb
    changes=(--change 'CMD ["/bin/bash"]')
    if [ -f "$CA_BUNDLE" ]; then
        install -D -m 0644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/site-ca-bundle.crt"
        changes+=(--change 'ENV PIP_CERT=/etc/ssl/certs/site-ca-bundle.crt')
    fi
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import "${changes[@]}" - "$BASE"
    rm -rf "$rootfs"
fi

step "podman build --isolation chroot --storage-driver vfs (Dockerfile.cuda on $BASE)"
start=$(date +%s)
"${PODMAN[@]}" build --isolation chroot --format docker --build-arg "CUDA_IMAGE=$BASE" \
    -f "$ROOT/Dockerfile.cuda" -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "podman build (see $WORK/build.log)"; }
echo "built $IMAGE in $(( $(date +%s) - start )) s; $("${PODMAN[@]}" image inspect "$IMAGE" \
    --format '{{.Size}}') bytes; user $("${PODMAN[@]}" image inspect "$IMAGE" \
    --format '{{.Config.User}}'), exposed $("${PODMAN[@]}" image inspect "$IMAGE" \
    --format '{{.Config.ExposedPorts}}')"
"${PODMAN[@]}" image inspect "$IMAGE" --format 'entrypoint {{.Config.Entrypoint}} cmd {{.Config.Cmd}}'
"${PODMAN[@]}" image inspect "$IMAGE" --format 'healthcheck {{.Config.Healthcheck.Test}}'

# this sandbox may lower but not raise rlimits; podman's defaults would raise them
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
RUN=("${PODMAN[@]}" run --rm --network host --no-healthcheck "${LIMITS[@]}")

step "gpustream --version"
"${RUN[@]}" "$IMAGE" --version

step "gpustream info"
"${RUN[@]}" "$IMAGE" info || fail "info exited $?"

step "gpustream info --engine cuda (no GPU here: must exit non-zero)"
set +e
"${RUN[@]}" "$IMAGE" info --engine cuda
code=$?
set -e
echo "exit status $code"
[ "$code" = 1 ] || fail "info --engine cuda exited $code, not 1"

step "the default command (run /work/pipeline.yaml) on a Nexmark spec"
job="$WORK/job"
rm -rf "$job" && install -d -m 0777 "$job"
cat >"$job/pipeline.yaml" <<'EOF'
name: smoke
source: {type: nexmark, stream: bids, events: 20000, event_time: date_time, watermark: 2s}
steps:
  - filter: "price > 100"
  - key_by: auction
  - window: {tumbling: 10s}
  - agg: {bids: count(), top: max(price)}
sink: {type: jsonl, path: out/hot.jsonl}
EOF
"${RUN[@]}" -v "$job:/work" "$IMAGE" | tee "$WORK/run.log"
grep -q "pipeline 'smoke' on cpu: 18400 events in" "$WORK/run.log" || fail "no summary"
grep -q "metrics: http://0.0.0.0:9108/metrics" "$WORK/run.log" || fail "metrics not on 0.0.0.0"
echo "$(wc -l <"$job/out/hot.jsonl") rows in out/hot.jsonl; the first: $(head -1 "$job/out/hot.jsonl")"

step "a followed source, /metrics published on :$PORT, HEALTHCHECK, then podman stop (SIGTERM)"
rm -rf "$job" && install -d -m 0777 "$job" "$job/in"
for i in $(seq 0 999); do printf '{"ts": %d, "k": "k%d", "v": %d}\n' "$((i * 100))" "$((i % 7))" "$i"; done \
    >"$job/in/a.jsonl"
cat >"$job/pipeline.yaml" <<'EOF'
name: follow
engine: cpu
source: {type: jsonl, path: in, follow: true, poll_interval: 50ms,
         schema: {ts: int64, k: string, v: int64}, event_time: ts}
steps:
  - filter: "v >= 0"
sink: {type: jsonl, path: out.jsonl}
EOF
# the health check runs when asked (podman healthcheck run): no systemd timers here
"${PODMAN[@]}" run -d --name "$NAME" -p "$PORT:9108" -v "$job:/work" "${LIMITS[@]}" \
    --health-interval disable --log-driver k8s-file "$IMAGE" >/dev/null 2>"$WORK/podman.log"
events_in() {
    curl -fsS "http://127.0.0.1:$PORT/metrics" 2>/dev/null \
        | awk '/^gpustream_events_in_total/ {print int($NF)}'
}
for _ in $(seq 1 120); do
    [ "$(events_in)" = 1000 ] && break
    sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep '^gpustream_events_in_total' \
    || { "${PODMAN[@]}" logs "$NAME"; fail "/metrics not reachable through the published port"; }
"${PODMAN[@]}" healthcheck run "$NAME" 2>>"$WORK/podman.log" && echo "healthcheck: healthy" \
    || fail "healthcheck failed"
start=$(date +%s)
"${PODMAN[@]}" stop -t 30 "$NAME" >/dev/null 2>>"$WORK/podman.log"  # no systemd: timer noise
code=$("${PODMAN[@]}" inspect "$NAME" --format '{{.State.ExitCode}}')
echo "stopped in $(( $(date +%s) - start )) s with exit status $code; its output:"
"${PODMAN[@]}" logs "$NAME" 2>&1 | tee "$WORK/follow.log"
[ "$code" = 143 ] || fail "exit status $code after SIGTERM, not 143"
grep -q "1000 events in" "$WORK/follow.log" || fail "no summary after SIGTERM"
grep -q "stopped by SIGTERM" "$WORK/follow.log" || fail "SIGTERM not reported"
[ "$(wc -l <"$job/out.jsonl")" = 1000 ] || fail "out.jsonl does not hold the 1000 rows read"
[ ! -e "$job/out.jsonl.tmp" ] || fail "the sink was not closed"
echo "out.jsonl closed with $(wc -l <"$job/out.jsonl") rows"

step "smoke build passed"
