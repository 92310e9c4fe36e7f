#!/usr/bin/env bash
# Install everything the tests need, then run them all: lint, types, unit, simulation,
# integration (moto server, dynalite, Prometheus, Alertmanager, systemd-analyze, cfn-lint),
# the network-namespace lab and the systemd tier (the lab's NATs as containers with a real
# systemd). Run as root on a fresh machine (CI does: .ci/run). Without root, the system
# packages must already be there and the lab and systemd tiers skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "system packages"
    mapfile -t wanted < <(grep -v '^\s*#' deploy/ci-packages.txt | sed '/^\s*$/d')
    command -v node >/dev/null || wanted+=(nodejs)
    command -v npm >/dev/null || wanted+=(npm)
    missing=()
    for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

rootfs_pid=""
if [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then
    # The systemd tier's Debian rootfs: built once per checkout (about 45 s), kept in .cache/systemd
    # under a key of its package list. It builds in the background while the rest installs and the
    # first tiers run (a download and unpacking, little CPU); the systemd tier takes the same file
    # lock (nspawn.ensure_rootfs), so it waits for this build or, if it failed, builds it itself.
    step "systemd container rootfs (debootstrap into .cache/systemd, in the background)"
    mkdir -p .cache
    PYTHONPATH=. "${PYTHON:-python3}" -c 'from agent.lab import nspawn; print(nspawn.ensure_rootfs())' \
        >.cache/rootfs-build.log 2>&1 &
    rootfs_pid=$!
fi

npm_pid=""
if command -v node >/dev/null && command -v npm >/dev/null; then
    step "dynalite (npm, in the background)"
    mkdir -p .cache
    [ -x .cache/dynalite/node_modules/.bin/dynalite ] || \
        { npm install --silent --no-audit --no-fund --prefix .cache/dynalite dynalite@4.0.0 >/dev/null 2>&1 & npm_pid=$!; }
fi

step "python environment (.venv)"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true  # an old pip cannot install pyproject editables
.venv/bin/python -m pip install -q --no-compile -e '.[test]' 2>&1 | grep -v -i -E 'warning|location .* is ignored' || true
export PATH="$PWD/.venv/bin:$PATH"
[ -z "$npm_pid" ] || wait "$npm_pid" || echo "npm install of dynalite failed (the dynalite tests say why)" >&2

prebake_pid=""
step "ruff"
ruff check agent coordinator tests bench

set +e
if [ "$#" -gt 0 ]; then
    step "mypy"
    mypy
    code=$?
    step "pytest $*"
    python -m pytest -p no:cacheprovider -q -rs --durations=15 "$@"
    tier=$?
    [ "$code" -ne 0 ] || code=$tier
else
    # Three runs, one record of AWS calls. The unit tier shares nothing between files, so it runs on
    # two processes (pytest-xdist; a file's tests stay on one process), alone: some of its tests time
    # real sockets. The integration, lab and systemd tiers (real servers, namespaces and containers,
    # waiting on real time) then run one test at a time, and beside them, at the lowest priority,
    # what waits on nothing: the systemd tier's image bake, mypy, the files that time nothing
    # (below), the simulation tier and its seed sweep (virtual time), so the lab's agents, servers and
    # containers take the CPU first. CI sweeps 300 seeds (a developer's `pytest tests/sim` 600, bench/sim.py 10,000): the
    # 20-minute budget.
    # The files that time nothing: cfn-lint, the stacks in moto's CloudFormation, systemd-analyze;
    # promtool, botocore's models on in-process moto, the layering, the release build, the benches' and
    # the config's command lines. Both foreground runs leave them out; the background runs them.
    untimed=(tests/integration/test_cloudformation.py tests/integration/test_cfn_stacks.py tests/integration/test_systemd.py
             tests/unit/dashboards/test_alert_rules.py tests/unit/aws/test_models.py tests/unit/test_layers.py
             tests/unit/deploy/test_release.py tests/unit/test_bench_cli.py tests/unit/commands/test_config_cli.py)
    ignore=()
    for f in "${untimed[@]}"; do ignore+=(--ignore="$f"); done
    tiers=(tests/unit tests/sim tests/integration tests/lab tests/systemd)
    for d in tests/*/; do
        case " ${tiers[*]} " in *" ${d%/} "*) ;; *) echo "tests/run-all.sh does not run ${d%/}: add it" >&2; exit 1;; esac
    done
    NAT_HA_RECORD_AWS_CALLS=$(mktemp -d)/aws-calls.jsonl
    export NAT_HA_RECORD_AWS_CALLS
    step "pytest: unit tier (two processes)"
    python -m pytest -p no:cacheprovider -q -rs --durations=10 -n 2 --dist loadfile -m "not iam_last" "${ignore[@]}" tests/unit
    code=$?
    if python -c 'from agent.lab import netlab, nspawn; raise SystemExit(bool(netlab.skip_reason() or nspawn.skip_reason()))' 2>/dev/null; then
        # The systemd tier's image (the stack's user data run in a container: an install, about a
        # minute, nothing timed), baked while the integration and lab tiers run instead of at the
        # systemd tier's start. The tier takes it (agent.lab.nspawn.prebaked_image, waiting for it if
        # need be) or, if this bake failed, bakes it itself.
        step "systemd lab image (baked in the background, nice 19, for the systemd tier)"
        export NAT_HA_PREBAKED_IMAGE="$PWD/.cache/prebake/image.json"
        rm -rf .cache/prebake && mkdir -p .cache/prebake
        nice -n 19 python -m agent.lab.netlab prebake "$NAT_HA_PREBAKED_IMAGE" >.cache/prebake.log 2>&1 &
        prebake_pid=$!
    fi
    step "pytest: mypy, the untimed integration and unit files, the simulation tier and 300 seeds (background, nice 19) beside the integration, lab and systemd tiers"
    sim_log=$(mktemp)
    (
        first=0
        keep() { [ "$first" -ne 0 ] || first=$1; }
        echo "==> mypy"
        nice -n 19 mypy
        keep $?
        echo "==> ${untimed[*]}"
        nice -n 19 python -m pytest -p no:cacheprovider -q -rs --durations=5 "${untimed[@]}"
        keep $?
        echo "==> tests/sim"
        nice -n 19 python -m pytest -p no:cacheprovider -q -rs --durations=5 -n 2 --dist loadfile \
            --ignore=tests/sim/test_seeds.py tests/sim
        keep $?
        nice -n 19 python -m pytest -p no:cacheprovider -q -rs tests/sim/test_seeds.py --sim-seeds 300
        keep $?
        exit "$first"
    ) >"$sim_log" 2>&1 &
    sim_pid=$!
    python -m pytest -p no:cacheprovider -q -rs --durations=60 "${ignore[@]}" tests/integration tests/lab tests/systemd
    second=$?
    wait "$sim_pid"
    sim=$?
    step "pytest: the background run's output"
    cat "$sim_log"
    if [ -n "$prebake_pid" ]; then
        wait "$prebake_pid" || echo "the background bake of the systemd image failed (the tier baked it itself):" >&2
        tail -n 3 .cache/prebake.log
    fi
    [ "$code" -ne 0 ] || code=$second  # the first failure's code (5, no test collected, fails below)
    [ "$code" -ne 0 ] || code=$sim
    # A process of its own, after both runs: it reads every call they recorded.
    step "pytest: the IAM policy over every call both runs recorded"
    python -m pytest -p no:cacheprovider -q -rs tests/unit/aws/test_iam_policy.py
    third=$?
    [ "$code" -ne 0 ] || code=$third
fi
set -e
if [ -n "$rootfs_pid" ] && ! wait "$rootfs_pid"; then
    echo "the background rootfs build failed (the systemd tier built it again or said why):" >&2
    tail -n 5 .cache/rootfs-build.log >&2
fi
[ -z "$prebake_pid" ] || rm -rf .cache/prebake  # the baked image's layer (an installed venv): this run's only
step "done"
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$code"
