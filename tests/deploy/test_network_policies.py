"""The NetworkPolicies of the rendered overlays, evaluated as data: who may open a
connection to whom, on which port.

A small evaluator of Kubernetes' NetworkPolicy semantics (pod and namespace label
selectors, ipBlocks, ports, policy types; a connection needs both the egress of its
source and the ingress of its destination) runs over pods labelled as they will be: the
Deployments as rendered, the flow-run pod from the Prefect job template, and the Dask
pods from our DaskCluster spec through the dask-kubernetes operator's own builders.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import pytest

from riverlake import cluster
from riverlake.settings import get_settings
from tests.deploy.test_manifests import JOB_TEMPLATE

pytestmark = pytest.mark.deploy

NAMESPACE = "riverlake"
PROTOCOLS = ("TCP", "UDP", "SCTP")
#: Ports no policy names: every such port is treated alike by every policy (a rule lists
#: ports or opens all of them), so these stand for all the others.
UNNAMED_PORTS = (1, 22, 80, 3306, 6379, 8080, 9000, 27017, 65535)


@dataclass(frozen=True)
class Pod:
    """A connection's end: a pod (namespace set) or an address outside the cluster."""

    name: str
    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str = "10.1.0.10"


# ------------------------------------------------------------------ the evaluator (pure)


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against labels; {} selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, other: Pod) -> bool:
    """One ``from``/``to`` entry against the other end of the connection."""
    if "ipBlock" in peer:
        if other.namespace is not None:  # pod IPs in ipBlocks: not relied upon here
            return False
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(x) for x in block.get("except") or []
        )
    if other.namespace is None:  # pod and namespace selectors select pods only
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_namespace:  # a podSelector alone: the policy's namespace
        return False
    return selects(peer.get("podSelector"), other.labels)


def port_matches(ports: list[dict] | None, protocol: str, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        assert "endPort" not in p and not isinstance(p.get("port"), str), (
            f"the evaluator does not model port ranges or named ports: {p}"
        )
        if p.get("protocol", "TCP") == protocol and p.get("port") in (None, port):
            return True
    return False


def policy_types(spec: dict) -> list[str]:
    return spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])


def allowed(policies: list[dict], direction: str, pod: Pod, other: Pod, protocol: str,
            port: int) -> bool:  # fmt: skip
    """Whether the policies of ``pod``'s namespace let ``pod`` take this connection in
    (direction Ingress, from ``other``) or open it (Egress, to ``other``)."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [p for p in policies
                if p["metadata"]["namespace"] == pod.namespace
                and direction in policy_types(p["spec"])
                and selects(p["spec"]["podSelector"], pod.labels)]  # fmt: skip
    if not applying:  # a pod no policy isolates takes and opens every connection
        return True

    def admits(rule: dict, namespace: str) -> bool:
        peers = rule.get(peers_key)  # none: every peer
        return (not peers or any(peer_matches(x, namespace, other) for x in peers)) and (
            port_matches(rule.get("ports"), protocol, port)
        )

    return any(admits(rule, p["metadata"]["namespace"])
               for p in applying for rule in p["spec"].get(rules_key) or [])  # fmt: skip


def connects(policies: list[dict], src: Pod, dst: Pod, protocol: str, port: int) -> bool:
    """A connection from ``src`` to ``dst``'s port: the egress of one, the ingress of the other."""
    out_ok = src.namespace is None or allowed(policies, "Egress", src, dst, protocol, port)
    in_ok = dst.namespace is None or allowed(policies, "Ingress", dst, src, protocol, port)
    return out_ok and in_ok


def port_universe(policies: list[dict]) -> set[tuple[str, int]]:
    mentioned = {p["port"] for pol in policies for d in ("ingress", "egress")
             for r in pol["spec"].get(d) or [] for p in r.get("ports") or [] if "port" in p}  # fmt: skip
    return {(proto, port) for proto in PROTOCOLS for port in mentioned | set(UNNAMED_PORTS)}


def open_ports(policies: list[dict], src: Pod, dst: Pod) -> set[tuple[str, int]]:
    return {(proto, port) for proto, port in sorted(port_universe(policies))
            if connects(policies, src, dst, proto, port)}  # fmt: skip


# ------------------------------------------------------------------ the pods


def network_policies(objs: list[dict]) -> list[dict]:
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert pols and all(p["metadata"]["namespace"] == NAMESPACE for p in pols)
    return pols


def dask_pod(role: str, name: str = "flights-run-1") -> Pod:
    """A scheduler or worker pod of the DaskCluster a run creates, labelled as the operator
    labels it: the DaskCluster's labels, then the operator's own (its builders)."""
    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    spec = cluster.make_dask_cluster_spec(cluster.cluster_options(get_settings()), name=name)
    labels = spec["metadata"]["labels"]
    if role == "scheduler":
        built = build_scheduler_deployment_spec(name, spec["spec"]["scheduler"]["spec"], {},
                                                labels)  # fmt: skip
    else:
        built = build_worker_deployment_spec(f"{name}-default", NAMESPACE, name, "0123456789",
                                             spec["spec"]["worker"]["spec"], {}, labels)  # fmt: skip
    return Pod(f"dask {role}", NAMESPACE, built["spec"]["template"]["metadata"]["labels"])


def flow_run_pod() -> Pod:
    tpl = json.loads(JOB_TEMPLATE.read_text())
    labels = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["metadata"]["labels"]
    return Pod("flow run", NAMESPACE, labels)


def manifest_pods(objs: list[dict]) -> list[Pod]:
    """The pods of every workload the overlay renders, with their template's labels."""
    return [Pod(f"{o['kind']}/{o['metadata']['name']}", NAMESPACE,
                o["spec"]["template"]["metadata"].get("labels", {}))
            for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]  # fmt: skip


KUBE_DNS = Pod("kube-system/kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.1.9.10")
PREFECT_SERVER = Pod("prefect/prefect-server", "prefect",
                     {"app.kubernetes.io/name": "prefect-server"}, "10.1.9.20")  # fmt: skip
#: S3, the Kubernetes API, the sources' hosts: addresses outside the cluster.
OUTSIDE = Pod("outside the cluster", None, {}, "203.0.113.7")


def everyone(objs: list[dict]) -> list[Pod]:
    """Every kind of pod that could try to connect: ours, strangers in our namespace, the
    platform's pods in other namespaces, and addresses outside the cluster."""
    return [
        *manifest_pods(objs),
        flow_run_pod(),
        dask_pod("scheduler"),
        dask_pod("worker"),
        Pod("dask job runner", NAMESPACE,
            {"dask.org/component": "job-runner", "dask.org/cluster-name": "flights-run-1"}),
        Pod("unlabelled pod", NAMESPACE, {}),
        Pod("pod labelled riverlake", NAMESPACE, {"app.kubernetes.io/part-of": "riverlake"}),
        Pod("monitoring/prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        Pod("dask-operator/operator", "dask-operator",
            {"app.kubernetes.io/name": "dask-kubernetes-operator"}),
        Pod("ingress-nginx/controller", "ingress-nginx",
            {"app.kubernetes.io/name": "ingress-nginx"}),
        PREFECT_SERVER,
        KUBE_DNS,
        Pod("default/pod", "default", {"app.kubernetes.io/component": "flow-run"}),
        OUTSIDE,
    ]  # fmt: skip


# ------------------------------------------------------------------ the evaluator, checked


def test_the_evaluator_follows_the_kubernetes_semantics():
    deny = {"metadata": {"name": "deny", "namespace": "n"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}  # fmt: skip
    web = {"metadata": {"name": "web", "namespace": "n"}, "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                              {"namespaceSelector": {"matchLabels": {
                                  "kubernetes.io/metadata.name": "mon"}},
                               "podSelector": {"matchExpressions": [
                                   {"key": "scraper", "operator": "Exists"}]}}],
                     "ports": [{"port": 80}]}]}}  # fmt: skip
    out = {"metadata": {"name": "out", "namespace": "n"}, "spec": {
        "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24",
                                        "except": ["203.0.113.128/25"]}}]},
                   {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}}  # fmt: skip
    pols = [deny, web, out]
    w = Pod("web", "n", {"app": "web"})
    client, other = Pod("c", "n", {"role": "client"}), Pod("o", "n", {"role": "other"})
    assert connects(pols, client, w, "TCP", 80)
    assert not connects(pols, client, w, "TCP", 81)  # a port the rule does not list
    assert not connects(pols, client, w, "UDP", 80)  # ports are TCP unless they say
    assert not connects(pols, other, w, "TCP", 80)  # neither egress nor ingress for it
    assert not connects(pols, Pod("c", "x", {"role": "client"}), w, "TCP", 80)  # a
    # podSelector alone selects in the policy's namespace only
    assert connects(pols, Pod("p", "mon", {"scraper": "1"}), w, "TCP", 80)
    assert not connects(pols, Pod("p", "mon", {}), w, "TCP", 80)  # both selectors must hold
    assert connects(pols, client, Pod("x", None, ip="203.0.113.9"), "TCP", 5)
    assert not connects(pols, client, Pod("x", None, ip="203.0.113.200"), "TCP", 5)
    assert not connects(pols, w, Pod("x", None, ip="203.0.113.9"), "TCP", 5)  # denied egress
    # a namespace without policies isolates nothing
    assert connects(pols, Pod("a", "free"), Pod("b", "free"), "TCP", 1)


# ------------------------------------------------------------------ the scheduler


def test_only_dask_workers_and_flow_run_pods_reach_the_scheduler(overlay):
    """8786: the workers and the flow-run pod of this namespace; the apps, the Prefect
    worker, other schedulers, strangers and every other namespace are refused."""
    _name, objs = overlay
    pols = network_policies(objs)
    sched = dask_pod("scheduler")
    pods = everyone(objs)
    assert {"Deployment/riverlake-apps", "Deployment/prefect-worker"} <= {p.name for p in pods}
    reach = {p.name for p in pods if connects(pols, p, sched, "TCP", 8786)}
    assert reach == {"dask worker", "flow run"}
    # The limit of NetworkPolicy the policy's comment states: a worker of another run's
    # cluster of this namespace is not told apart from the scheduler's own.
    assert connects(pols, dask_pod("worker", name="another-run"), sched, "TCP", 8786)
    # The dashboard: Prometheus (/metrics) and the operator (its HTTP API) only.
    reach = {p.name for p in pods if connects(pols, p, sched, "TCP", 8787)}
    assert reach == {"monitoring/prometheus", "dask-operator/operator"}
    # No other port of the scheduler is open to anyone.
    ports = port_universe(pols) - {("TCP", 8786), ("TCP", 8787)}
    assert not [(p.name, port) for p in pods for port in ports if connects(pols, p, sched, *port)]


def test_dask_workers_take_connections_from_their_peers_and_prometheus_only(overlay):
    _name, objs = overlay
    pols = network_policies(objs)
    worker = dask_pod("worker")
    pods = everyone(objs)
    reach = {p.name for p in pods if connects(pols, p, worker, "TCP", 40123)}  # a random port
    assert reach == {"dask scheduler", "dask worker", "flow run"}
    reach = {p.name for p in pods if connects(pols, p, worker, "TCP", 8788)}
    assert reach == {"dask scheduler", "dask worker", "flow run", "monitoring/prometheus"}


# ------------------------------------------------------------------ egress


SOURCES = {("TCP", 443), ("TCP", 4222), ("TCP", 5432)}  # HTTPS, NATS, PostgreSQL
DNS = {("UDP", 53), ("TCP", 53)}
PREFECT_API = {("TCP", 4200)}


@pytest.mark.parametrize("reader", ["flow run", "dask worker"])
def test_source_readers_reach_https_nats_and_postgres_and_nothing_else(overlay, reader):
    """Outside the cluster: 443, 4222 and 5432 (TCP); besides, DNS at kube-dns and the
    Prefect API in its namespace. Inside the namespace: the Dask pods only."""
    _name, objs = overlay
    pols = network_policies(objs)
    src = flow_run_pod() if reader == "flow run" else dask_pod("worker")
    assert open_ports(pols, src, OUTSIDE) == SOURCES
    assert open_ports(pols, src, KUBE_DNS) == SOURCES | DNS
    assert open_ports(pols, src, PREFECT_SERVER) == SOURCES | PREFECT_API
    others = [p for p in everyone(objs) if p.namespace not in (None, NAMESPACE)]
    for p in others:
        assert open_ports(pols, src, p) <= SOURCES | DNS | PREFECT_API, p.name
    # in the namespace: the Dask pods, never the apps or the Prefect worker
    assert connects(pols, src, dask_pod("scheduler"), "TCP", 8786)
    assert connects(pols, src, dask_pod("worker"), "TCP", 40123)
    for p in manifest_pods(objs):
        assert open_ports(pols, src, p) == set(), p.name


def test_pods_that_read_no_source_keep_https_only(overlay):
    _name, objs = overlay
    pols = network_policies(objs)
    for pod in [*manifest_pods(objs), dask_pod("scheduler")]:
        assert open_ports(pols, pod, OUTSIDE) == {("TCP", 443)}, pod.name
