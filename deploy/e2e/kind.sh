#!/usr/bin/env bash
# End-to-end on a kind cluster (GitHub Actions job `e2e-kind`; needs Docker, kind, helm,
# kubectl). Not runnable on machines without a Docker engine, such as the dev machines.
#
# 1. build the image and load it into kind;
# 2. install the dask-kubernetes operator chart (the version Terraform pins);
# 3. apply the dev overlay (namespace, RBAC, NetworkPolicies, apps, worker component);
# 4. run a flow-run-like Job (service account riverlake-runner, downward-API env) that
#    starts a DaskCluster from cluster.make_dask_cluster_spec, checks versions, and
#    computes on it;
# 5. delete the Job's pod and check the DaskCluster is garbage-collected (ownerReference).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=ghcr.io/riverlake/riverlake:e2e
OPERATOR_VERSION=$(grep -A3 'variable "dask_operator_chart_version"' terraform/modules/platform/variables.tf \
  | sed -n 's/.*default *= *"\(.*\)"/\1/p')

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE"
helm repo add dask https://helm.dask.org && helm repo update
helm install --create-namespace -n dask-operator dask-kubernetes-operator \
  dask/dask-kubernetes-operator --version "$OPERATOR_VERSION" --wait
# NetworkPolicies need a CNI that enforces them; kind's default does not, which only
# makes this test more permissive, never less.
kubectl kustomize deploy/kubernetes/overlays/dev \
  | sed "s#ghcr.io/riverlake/riverlake:0.1.0#$IMAGE#g" | kubectl apply -f -
# The Panel apps and the worker need a lake and a Prefect API this test does not give
# them: scale them to zero; the Job below is what is exercised.
kubectl -n riverlake scale deployment/riverlake-apps deployment/prefect-worker --replicas=0

kubectl -n riverlake apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: e2e-flow-run}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {app.kubernetes.io/component: flow-run, app.kubernetes.io/part-of: riverlake}}
    spec:
      restartPolicy: Never
      serviceAccountName: riverlake-runner
      securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: run
          image: $IMAGE
          imagePullPolicy: Never
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          env:
            - {name: RIVERLAKE_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: RIVERLAKE_POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
            - {name: RIVERLAKE_IMAGE, value: "$IMAGE"}
            - {name: RIVERLAKE_WORKER_PROFILE, value: small}
          command: [python, -c]
          args:
            - |
              from distributed import Client
              from riverlake.settings import get_settings
              import cluster
              c = cluster.kubernetes_cluster(get_settings())
              with Client(c) as client:
                  assert client.submit(sum, range(10)).result() == 45
              print("E2E-OK", c.name)
              import time; time.sleep(600)   # keep the pod (the owner) alive until deleted
          volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {}}]
YAML
for _ in $(seq 1 60); do
  kubectl -n riverlake logs job/e2e-flow-run 2>/dev/null | grep -q E2E-OK && break
  sleep 5
done
kubectl -n riverlake logs job/e2e-flow-run | grep E2E-OK
test "$(kubectl -n riverlake get daskclusters -o name | wc -l)" -eq 1
kubectl -n riverlake delete job e2e-flow-run --wait=true
for _ in $(seq 1 30); do
  [ "$(kubectl -n riverlake get daskclusters -o name | wc -l)" -eq 0 ] && echo "E2E: DaskCluster collected" && exit 0
  sleep 5
done
echo "E2E: the DaskCluster outlived its flow-run pod" >&2
exit 1
