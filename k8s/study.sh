#!/usr/bin/env bash
# One hpo search with its study folders kept in object storage: the entrypoint of
# k8s/rayjob.yaml, run on the Ray head it submits to. results/ comes down from STORE/results
# when this head has none (a new cluster), and goes back up when the search ends, fails or is
# stopped; trials write their checkpoints to STORE/ray_results themselves. Run the same job
# again to resume the study.
#
#   bash k8s/study.sh s3://BUCKET/PREFIX SPACE --data DIR --address auto [hpo search options]
#
# STORE is any URI pyarrow.fs reads (s3://, gs://, file://); credentials as pyarrow finds
# them (on S3: the pod's role, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its env).
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "study.sh: usage: study.sh STORE-URI SPACE --data DIR [hpo search options]" >&2
    exit 2
fi
store=${1%/}
shift
cd "$(dirname "$0")/.."

# copy SOURCE DESTINATION: a folder, between this disk and the store; a SOURCE that does
# not exist copies nothing
copy() {
    python - "$@" <<'PY'
import sys
from pyarrow import fs

def located(where):
    return fs.FileSystem.from_uri(where) if "://" in where else (fs.LocalFileSystem(), where)

(source, src), (target, dst) = located(sys.argv[1]), located(sys.argv[2])
if source.get_file_info(src).type != fs.FileType.NotFound:
    fs.copy_files(src, dst, source_filesystem=source, destination_filesystem=target)
PY
}

if [ ! -d results ]; then
    copy "$store/results" "$PWD/results" || exit
fi
hpo search --storage-path "$store/ray_results" "$@"
status=$?
copy "$PWD/results" "$store/results" || exit
exit $status
