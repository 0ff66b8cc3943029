#!/usr/bin/env bash
# Regenerates the checked-in stubs of TorchServe's gRPC inference API (never edit them by hand):
#   predictor/serving/ts_proto/generate.sh [PROTO_DIR] [OUT_ROOT]
# PROTO_DIR: TorchServe's .proto files (default: ../shared/torchserve-proto next to the repository);
# OUT_ROOT: where predictor/serving/ts_proto/*.py are written (default: the repository root).
# The .proto is placed under predictor/serving/ts_proto/ in a scratch include root, so the generated
# *_pb2_grpc.py imports its messages from this package. Needs grpcio-tools (pinned in the `test`
# extra, so regenerating gives byte-identical files) and googleapis-common-protos (google/rpc/status.proto).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../../.." && pwd)"
proto_dir="${1:-$repo/../shared/torchserve-proto}"
out_root="${2:-$repo}"
python="${PYTHON:-python}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/predictor/serving/ts_proto"
cp "$proto_dir/inference.proto" "$scratch/predictor/serving/ts_proto/inference.proto"
google_protos="$("$python" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(list(google.rpc.__path__)[0])))')"
tools_protos="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
cd "$scratch"
"$python" -m grpc_tools.protoc -I . -I "$google_protos" -I "$tools_protos" \
    --python_out="$out_root" --grpc_python_out="$out_root" predictor/serving/ts_proto/inference.proto
