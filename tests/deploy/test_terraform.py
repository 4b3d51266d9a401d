"""Terraform, parsed (python-hcl2) and checked by checkov; no terraform binary exists here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import hcl2
import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import checkov

pytestmark = pytest.mark.deploy

TF = ROOT / "terraform"
MODULES = sorted(p.name for p in (TF / "modules").iterdir() if p.is_dir())
ENVS = sorted(p.name for p in (TF / "envs").iterdir() if p.is_dir())
EXACT = re.compile(r"^\d+\.\d+\.\d+$")


def unq(v):
    return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v


def blocks(folder: Path, kind: str) -> dict[str, dict]:
    """Every ``kind`` block (variable, output, module, ...) of a folder, by name."""
    out = {}
    for f in sorted(folder.glob("*.tf")):
        for block in hcl2.load(f.open()).get(kind, []):
            for name, body in block.items():
                out[unq(name)] = {k: unq(v) for k, v in body.items()}
    return out


def providers(folder: Path) -> dict[str, dict]:
    out = {}
    for f in folder.glob("*.tf"):
        for t in hcl2.load(f.open()).get("terraform", []):
            for req in t.get("required_providers", []):
                out |= {k: {a: unq(b) for a, b in v.items()} for k, v in req.items()
                        if k != "__is_block__"}  # fmt: skip
    return out


def folders() -> list[Path]:
    return [TF / "modules" / m for m in MODULES] + [TF / "envs" / e for e in ENVS]


def test_the_layout_is_modules_plus_environments():
    assert MODULES == ["aws", "eks", "irsa", "lake", "network", "platform"]
    assert ENVS == ["dev", "existing-cluster", "prod"]
    # dev and prod share their root module (linked files); only their main.tf differs
    for env in ("dev", "prod"):
        linked = sorted(p.name for p in (TF / "envs" / env).glob("*.tf") if p.is_symlink())
        assert linked == ["outputs.tf", "stack.tf", "variables.tf", "versions.tf"]


def test_every_module_is_used_and_aws_environments_build_everything():
    def used_by(folder: Path) -> set[str]:
        return {Path(m["source"]).name for m in blocks(folder, "module").values()
                if m["source"].startswith("../")}  # fmt: skip

    used = set().union(*(used_by(f) for f in folders()))
    assert used == set(MODULES)
    for env in ("dev", "prod"):
        assert used_by(TF / "envs" / env) == {"aws", "platform"}
    assert used_by(TF / "modules" / "aws") == {"network", "eks", "lake", "irsa"}
    assert used_by(TF / "envs" / "existing-cluster") == {"platform"}  # Helm and manifests only


@pytest.mark.parametrize("folder", folders(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_variable_is_typed_and_described_and_every_output_described(folder):
    variables = blocks(folder, "variable")
    for name, v in variables.items():
        assert "type" in v, f"{folder.name}: variable {name} has no type"
        assert v.get("description"), f"{folder.name}: variable {name} has no description"
    for name, o in blocks(folder, "output").items():
        assert o.get("description"), f"{folder.name}: output {name} has no description"
    # every variable declared is used in the folder
    text = "\n".join(f.read_text() for f in folder.glob("*.tf"))
    for name in variables:
        assert f"var.{name}" in text, f"{folder.name}: variable {name} is never used"


@pytest.mark.parametrize("folder", folders(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_providers_and_registry_modules_are_pinned_exactly(folder):
    provs = providers(folder)
    assert provs, folder
    for name, p in provs.items():
        assert EXACT.match(p["version"]), f"{folder.name}: provider {name} is not pinned"
    for name, m in blocks(folder, "module").items():
        if not m["source"].startswith("../"):
            assert EXACT.match(m.get("version", "")), f"{folder.name}: module {name} not pinned"


def test_environments_output_the_kubeconfig_the_bucket_and_the_urls():
    for env in ENVS:
        outputs = set(blocks(TF / "envs" / env, "output"))
        assert {"kubeconfig", "bucket_name", "apps_url", "prefect_api_url"} <= outputs, env


def test_the_lake_bucket_is_versioned_encrypted_private_tls_only_and_tiered():
    res = {}
    for f in (TF / "modules" / "lake").glob("*.tf"):
        for block in hcl2.load(f.open()).get("resource", []):
            for kind, named in block.items():
                for name in named:
                    res[(unq(kind), unq(name))] = named[name]
    buckets = (TF / "modules" / "lake" / "main.tf").read_text()
    assert "buckets = { lake = aws_s3_bucket.lake.id, logs = aws_s3_bucket.logs.id }" in buckets
    for kind in ("aws_s3_bucket_versioning", "aws_s3_bucket_server_side_encryption_configuration",
                 "aws_s3_bucket_public_access_block"):  # fmt: skip
        assert res[(kind, "this")]["for_each"] == "${local.buckets}"
    sse = json.dumps(res[("aws_s3_bucket_server_side_encryption_configuration", "this")])
    assert "aws:kms" in sse and "aws_kms_key.lake.arn" in sse
    pab = res[("aws_s3_bucket_public_access_block", "this")]
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy",
                                        "ignore_public_acls", "restrict_public_buckets"))  # fmt: skip
    assert res[("aws_kms_key", "lake")]["enable_key_rotation"] is True
    rules = json.dumps(res[("aws_s3_bucket_lifecycle_configuration", "lake")])
    assert "lake/landing/" in rules
    policy = (TF / "modules" / "lake" / "main.tf").read_text()
    assert "aws:SecureTransport" in policy


def test_irsa_roles_are_scoped_to_the_bucket_and_no_static_keys_exist():
    text = "\n".join(f.read_text() for f in TF.rglob("*.tf"))
    assert "aws_iam_access_key" not in text and "secret_key" not in text
    irsa = (TF / "modules" / "irsa" / "main.tf").read_text()
    assert "sts:AssumeRoleWithWebIdentity" in irsa and "system:serviceaccount:" in irsa
    assert re.findall(r"resources\s*=\s*\[(.*?)\]", irsa) == [
        "var.bucket_arn", '"${var.bucket_arn}/*"', "var.kms_key_arn"]  # fmt: skip


def test_checkov_passes_the_terraform():
    res = subprocess.run(
        [checkov(), "-d", str(TF), "--framework", "terraform", "--compact",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(res.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 50
    # every skip is justified where it is made
    for c in report["results"]["skipped_checks"]:
        assert len(c["check_result"].get("suppress_comment", "")) > 20, c["check_id"]


def resources(folder: Path) -> dict[tuple[str, str], dict]:
    """Every resource of a folder, by (type, name), its attributes unquoted."""
    out = {}
    for f in sorted(folder.glob("*.tf")):
        for block in hcl2.load(f.open()).get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    out[(unq(kind), unq(name))] = {k: unq(v) for k, v in body.items()}
    return out


def jsonencoded(expr: str):
    """The value of a ``jsonencode({...})`` attribute, as the JSON Terraform would send."""
    m = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", expr, re.DOTALL)
    assert m, f"not a jsonencode(...) expression: {expr}"

    def plain(v):
        if isinstance(v, dict):
            return {unq(k): plain(x) for k, x in v.items() if k != "__is_block__"}
        return [plain(x) for x in v] if isinstance(v, list) else unq(v)

    return plain(hcl2.loads(f"v = {m.group(1)}\n")["v"])


def test_the_cluster_enforces_network_policies_with_the_vpc_cni_add_on():
    """Without an engine, NetworkPolicy objects are accepted and ignored: the VPC CNI add-on
    with its network policy agent on (AWS: configuration value enableNetworkPolicy "true")."""
    eks = TF / "modules" / "eks"
    addons = {r["addon_name"]: r for (kind, _), r in resources(eks).items()
              if kind == "aws_eks_addon"}  # fmt: skip
    cni = addons["vpc-cni"]
    assert cni["cluster_name"] == "${module.eks.cluster_name}"
    assert jsonencoded(cni["configuration_values"])["enableNetworkPolicy"] == "true"
    # EKS installs a self-managed vpc-cni with every cluster: the add-on takes it over
    assert cni["resolve_conflicts_on_create"] == "OVERWRITE"
    # network policies need Kubernetes 1.25 or later (and VPC CNI 1.14 or later: the add-on
    # version is the default one for the cluster's Kubernetes version)
    minor = blocks(eks, "variable")["kubernetes_version"]["default"]
    assert tuple(int(x) for x in minor.split(".")) >= (1, 25)
    assert "aws_eks_addon_version.vpc_cni.version" in cni["addon_version"]


def test_no_lifecycle_rule_expires_what_a_delta_table_holds():
    """S3 knows nothing of Delta: expiring objects under a table (its _delta_log, or data
    files the log still names) corrupts it. Rows leave a table through Delta (`riverlake
    prune-quarantine`: a delete, then a vacuum), never through a lifecycle rule."""
    from riverlake.lake.names import LANDING, TABLES

    lake = TF / "modules" / "lake"
    url = blocks(lake, "output")["lake_url"]["value"]
    root = re.fullmatch(r"s3://\$\{aws_s3_bucket\.lake\.bucket\}/(.+)", url).group(1)
    tables, landing = f"{root}/{TABLES}/", f"{root}/{LANDING}/"
    (config,) = [r for (kind, name), r in resources(lake).items()
                 if kind == "aws_s3_bucket_lifecycle_configuration" and name == "lake"]  # fmt: skip
    rules = {unq(r["id"]): r for r in config["rule"]}
    assert rules
    for rid, rule in rules.items():
        (filt,) = rule["filter"]
        prefix = unq(filt.get("prefix", ""))
        assert not prefix.startswith(tables), f"rule {rid} acts inside the tables ({prefix})"
        if tables.startswith(prefix):  # the rule covers the tables (the whole bucket: "")
            assert "expiration" not in rule, f"rule {rid} expires objects of the tables"
            assert "transition" not in rule, f"rule {rid} moves objects of the tables"
    # landing/ holds plain files (the landed batches, immutable, read again when a month is
    # reprocessed): tiered to cheaper storage, never expired
    (landing_rule,) = [r for r in rules.values() if unq(r["filter"][0].get("prefix")) == landing]
    assert "expiration" not in landing_rule and landing_rule["transition"]
