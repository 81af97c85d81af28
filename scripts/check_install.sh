#!/usr/bin/env bash
# What a new user gets from the wheel, away from any checkout and with no ../shared:
#  1. the wheel: under 8 MB, and its only top-level name is s4edge;
#  2. a full install ('.[all]'): `models list` shows the shipped model verified, `detect`
#     finds a person in a photo, and `demo --duration 40 --json` gives vision alerts and an
#     NG112 call with no traceback on stderr;
#  3. a node install ('.[node,vision]'): none of the centre's packages, and `provision`
#     followed by `agent check` works.
# Prints one JSON line with the sizes it measured.
# Usage: scripts/check_install.sh [WHEEL]   (without WHEEL it builds one from this checkout)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
given=${1:+$(realpath "$1")}
work=$(mktemp -d /tmp/s4edge-install.XXXXXX)
cd "$work"  # no checkout here, and no ../shared beside it
[ ! -e "$work/../shared" ] || { echo "FAIL: $work/../shared exists; run this from a folder with no shared/ beside it" >&2; exit 1; }
unset S4EDGE_MODEL_MIRROR S4EDGE_MODELS_DIR S4EDGE_CAP_XSD S4EDGE_BOARDS_DIR
export HOME="$work/home" PIP_DISABLE_PIP_VERSION_CHECK=1  # an empty model cache, as on a new machine
mkdir -p "$HOME"

fail() { echo "FAIL: $*" >&2; exit 1; }
if [ -n "$given" ]; then
  wheel=$given
else
  python3 -m pip wheel -q --no-deps "$repo" -w "$work/dist"
  wheel=$(ls "$work"/dist/s4edge-*.whl)
fi
wheel_bytes=$(stat -c %s "$wheel")
[ "$wheel_bytes" -lt $((8 * 1024 * 1024)) ] || fail "the wheel is $wheel_bytes bytes, over 8 MB"
top=$(python3 -c 'import sys, zipfile; print(" ".join(sorted({n.split("/")[0] for n in zipfile.ZipFile(sys.argv[1]).namelist() if not n.split("/")[0].endswith(".dist-info")})))' "$wheel")
[ "$top" = "s4edge" ] || fail "the wheel's top-level names are '$top', not just 's4edge'"
echo "== wheel $(basename "$wheel"): $wheel_bytes bytes, top-level: $top"

site_mb() { du -sm "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1; }
packages() { "$1/bin/python" -m pip list --format freeze 2>/dev/null | grep -vcE '^(pip|setuptools|wheel)=='; }

echo "== full install (all extras)"
python3 -m venv "$work/full"
start=$(date +%s)
"$work/full/bin/pip" install -q "$wheel[all]"
full_s=$(( $(date +%s) - start ))
s4edge="$work/full/bin/s4edge"
"$s4edge" models list --json > models.json
python3 - models.json <<'EOF' || fail "models list does not show the shipped fastestdet as verified"
import json, sys
rows = {row["name"]: row for row in json.load(open(sys.argv[1]))["models"]}
row = rows["fastestdet"]
assert row["shipped"] and row["sha_ok"], row
EOF
photo="$work/people.jpg"
"$work/full/bin/python" -c 'import shutil, sys; from s4edge.resources import packaged; shutil.copy(packaged("demo_frames", "fastestdet_0.jpg"), sys.argv[1])' "$photo"
"$s4edge" detect "$photo" --json > detect.json
python3 - detect.json <<'EOF' || fail "detect found no person in $photo"
import json, sys
labels = [d["label"] for r in json.load(open(sys.argv[1]))["results"] for d in r["detections"]]
assert "person" in labels, labels
print("detect:", labels)
EOF
"$s4edge" demo --duration 40 --json > demo.json 2> demo.err || { cat demo.err >&2; fail "demo exited non-zero"; }
! grep -q "Traceback" demo.err || { cat demo.err >&2; fail "the demo printed a traceback"; }
python3 - demo.json <<'EOF' || { cat demo.err >&2; fail "the demo gave no vision alert or no NG112 call"; }
import json, sys
summary = json.load(open(sys.argv[1]))
print("demo:", json.dumps(summary))
vision = {"intrusion", "line_cross", "loitering", "crowd", "unattended_object"}
assert vision & set(summary["by_kind"]), summary["by_kind"]
assert summary["ng112_calls"] >= 1, summary
EOF

echo "== node install (node,vision extras)"
python3 -m venv "$work/node"
start=$(date +%s)
"$work/node/bin/pip" install -q "$wheel[node,vision]"
node_s=$(( $(date +%s) - start ))
for forbidden in fastapi uvicorn sqlalchemy psycopg amqtt pycocotools; do
  ! "$work/node/bin/pip" show -q "$forbidden" 2>/dev/null || fail "the node install pulled in $forbidden"
done
node="$work/node/bin/s4edge"
"$node" fleet ca init --out fleet > /dev/null
"$node" provision cam-1 --site plaza --lat 40.4168 --lon -3.7038 --broker mqtts://broker.example:8883 \
  --board rpi5 --ca-dir fleet --out node-files > /dev/null
"$node" agent check --config node-files/node.yaml
"$node" models list > /dev/null
"$node" detect "$photo" --json > /dev/null
if "$node" aggregator run --broker mqtt://127.0.0.1:1 --db sqlite:///agg.db > aggregator.out 2>&1; then
  fail "the aggregator ran on a node install"
fi
grep -q "s4edge\[aggregator\]" aggregator.out || { cat aggregator.out >&2; fail "the missing extra is not named in one line"; }
! grep -q Traceback aggregator.out || fail "a missing extra printed a traceback"

printf '{"wheel_bytes": %s, "full": {"packages": %s, "site_packages_mb": %s, "install_s": %s}, "node": {"packages": %s, "site_packages_mb": %s, "install_s": %s}}\n' \
  "$wheel_bytes" "$(packages "$work/full")" "$(site_mb "$work/full")" "$full_s" \
  "$(packages "$work/node")" "$(site_mb "$work/node")" "$node_s"
echo "install checks passed"
