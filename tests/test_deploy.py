"""deploy/: the Kubernetes manifests and images, checked offline.

- The committed YAML under deploy/k8s/ is exactly what `python -m glacier_stac.k8s --out deploy/` writes.
- Core kinds pass `kubernetes-validate --strict` for one pinned Kubernetes version; the Dask kinds pass the
  CRD schemas shipped in the installed dask-kubernetes wheel (jsonschema), closed against unknown fields
  the way the API server's strict field validation is. A deliberately broken manifest fails each check.
- Policy: credentials only by secretKeyRef, requests and limits on every container, DaskJob runners never
  restart, the CronJob never overlaps, GPU workers carry nvidia.com/gpu and `--resources GPU=1`.
- The Dockerfiles: non-root, pinned by constraints.txt, checkpoints shipped inside the package.
"""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from glacier_stac import __version__, k8s

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"  # the oldest Kubernetes the manifests promise to run on (CronJob timeZone is GA since 1.27)
DASK_GROUP = "kubernetes.dask.org/v1"
YEAR = "2025"

Doc = dict[str, Any]


# ------------------------------------------------------------------------------ loading


def generated() -> list[Doc]:
    """Every manifest the code generates, plus the annual update's DaskJob template filled in for YEAR."""
    docs = [d for text in k8s.render(DEPLOY).values() for d in yaml.safe_load_all(text)]
    templates = [d for d in docs if d["kind"] == "ConfigMap" and "update.yaml" in d.get("data", {})]
    assert len(templates) == 1, "expected one ConfigMap holding the annual update template"
    text = templates[0]["data"]["update.yaml"].replace(k8s.YEAR_PLACEHOLDER, YEAR)
    return docs + list(yaml.safe_load_all(text))


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, pod spec) for every pod template inside a manifest, whatever its kind."""
    def walk(node: Any, where: str) -> Iterator[tuple[str, Doc]]:
        if isinstance(node, dict):
            if "containers" in node:
                yield where, node
            for k, v in node.items():
                yield from walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{where}[{i}]")
    yield from walk(doc, f"{doc['kind']}/{doc['metadata']['name']}")


def containers(doc: Doc) -> Iterator[tuple[str, Doc]]:
    for where, pod in pod_specs(doc):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", c


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return generated()


# ------------------------------------------------------------------------------ in step with the code


def test_committed_yaml_is_what_the_code_generates() -> None:
    want = k8s.render(DEPLOY)
    have = {str(p.relative_to(DEPLOY)): p.read_text() for p in sorted((DEPLOY / "k8s").glob("*.yaml"))}
    assert sorted(have) == sorted(want), "deploy/k8s/ holds files the generator does not write (or lacks some)"
    stale = [name for name in want if have[name] != want[name]]
    assert not stale, f"{stale} differ from the generator: run `python -m glacier_stac.k8s --out deploy/`"


def test_images_are_the_package_version() -> None:
    images = {c["image"] for d in generated() for _, c in containers(d)}
    assert images == {f"{k8s.Settings.image_repo}:{__version__}", f"{k8s.Settings.image_repo}:{__version__}-cuda"}


# ------------------------------------------------------------------------------ core kinds: kubernetes-validate


def validate_core(doc: Doc) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_core_kinds_pass_kubernetes_validate_strict(docs: list[Doc]) -> None:
    core = [d for d in docs if d["apiVersion"] != DASK_GROUP]
    assert {d["kind"] for d in core} >= {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob",
                                        "PersistentVolumeClaim"}
    for d in core:
        validate_core(d)


def _set(doc: Doc, path: tuple[str | int, ...], value: Any) -> Doc:
    """A copy of doc with the item at `path` (keys and list indices) set to value; None deletes it."""
    doc = copy.deepcopy(doc)
    *parents, last = path
    node: Any = doc
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


CORE_BREAKS = {  # kind -> (path, value): each makes a manifest the API server would reject
    "Namespace": (("metadata", "nmae"), "glacier-stac"),  # unknown field: only --strict sees it
    "RoleBinding": (("roleRef",), None),  # required
    "Role": (("rules", 0, "verbs"), "get"),  # a string where a list belongs
    "ConfigMap": (("data", "run.toml"), 42),  # data values are strings
    "CronJob": (("spec", "jobTemplate", "spec", "template", "spec", "containers", 0, "resources", "limits"), ["cpu"]),
    "ServiceAccount": (("automountServiceAccountToken",), "yes"),
    "PersistentVolumeClaim": (("spec", "accessModes"), "ReadWriteOnce"),  # a string where a list belongs
}


@pytest.mark.parametrize("kind", sorted(CORE_BREAKS))
def test_broken_core_manifest_fails_kubernetes_validate(docs: list[Doc], kind: str) -> None:
    doc = by_kind(docs, kind)[0]
    validate_core(doc)  # the intact manifest passes: the failure below is the break's
    path, value = CORE_BREAKS[kind]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(_set(doc, path, value))


def test_cronjob_with_misspelt_field_fails_only_in_strict_mode(docs: list[Doc]) -> None:
    cron = _set(by_kind(docs, "CronJob")[0], ("spec", "concurrencypolicy"), "Forbid")
    kubernetes_validate.validate(cron, K8S_VERSION, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(cron)


# ------------------------------------------------------------------------------ Dask kinds: the wheel's CRDs


def crd_dir() -> Path:
    import dask_kubernetes

    helm = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
    path = helm / "dask-kubernetes-operator" / "crds"
    assert path.is_dir(), f"no CRDs in the installed dask-kubernetes wheel at {path}"
    return path


def _closed(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever it lists properties (strict field validation)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def crds() -> tuple[Doc, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB of YAML
    return tuple(yaml.load(p.read_text(), Loader=loader) for p in sorted(crd_dir().glob("*.yaml")))


@cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for one Dask kind from its CRD's v1 openAPIV3Schema, closed and given the envelope."""
    found = [c for c in crds() if c["spec"]["names"]["kind"] == kind]
    assert len(found) == 1, f"expected one CRD for {kind} in {crd_dir()}"
    (version,) = [v for v in found[0]["spec"]["versions"] if v["name"] == "v1"]
    schema = _closed(version["schema"]["openAPIV3Schema"])
    schema["properties"] |= {"apiVersion": {"const": DASK_GROUP}, "kind": {"const": kind},
                             "metadata": {"type": "object"}}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def validate_crd(doc: Doc) -> None:
    crd_validator(doc["kind"]).validate(doc)


def test_dask_kinds_match_crd_schemas(docs: list[Doc]) -> None:
    dask = [d for d in docs if d["apiVersion"] == DASK_GROUP]
    assert {d["kind"] for d in dask} == {"DaskCluster", "DaskWorkerGroup", "DaskJob"}
    assert len(by_kind(dask, "DaskJob")) == 2, "the global run and the filled-in annual update template"
    for d in dask:
        validate_crd(d)


LIMITS = ("spec", "worker", "spec", "containers", 0, "resources", "limits")
CRD_BREAKS = {  # name -> (kind, path, value)
    "gpu-quantity-int": ("DaskWorkerGroup", (*LIMITS, "nvidia.com/gpu"), 1),  # quantities are strings
    "replicas-string": ("DaskWorkerGroup", ("spec", "worker", "replicas"), "4"),
    "cluster-missing-service": ("DaskCluster", ("spec", "scheduler", "service"), None),
    "cluster-unknown-field": ("DaskCluster", ("spec", "workers"), {"replicas": 1}),
    "job-missing-cluster": ("DaskJob", ("spec", "cluster"), None),
    "job-misspelt-restart-policy": ("DaskJob", ("spec", "job", "spec", "restartpolicy"), "Never"),
}


@pytest.mark.parametrize("name", sorted(CRD_BREAKS))
def test_broken_dask_manifest_fails_crd_schema(docs: list[Doc], name: str) -> None:
    kind, path, value = CRD_BREAKS[name]
    doc = by_kind(docs, kind)[0]
    validate_crd(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_crd(_set(doc, path, value))


# ------------------------------------------------------------------------------ policy

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|(secret|password|token|subscription[_-]?key)\s*=", re.IGNORECASE)


def literal_secrets(docs: list[Doc]) -> list[str]:
    """Where a manifest carries a credential itself instead of a Secret reference."""
    found = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] == "Secret"]
    for d in docs:
        for where, c in containers(d):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {}):
                    found.append(f"{where} env {e['name']}")
        for key, text in d.get("data", {}).items():
            if SECRET_VALUE.search(text):
                found.append(f"{d['kind']}/{d['metadata']['name']} data {key}")
    return found


def test_credentials_only_by_secret_reference(docs: list[Doc]) -> None:
    assert literal_secrets(docs) == []
    refs = {(e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for d in docs for _, c in containers(d)
            for e in c.get("env", []) if "valueFrom" in e}
    names = {n for n, _ in refs}
    assert {"PC_SDK_SUBSCRIPTION_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names


@pytest.mark.parametrize("break_", ["literal-env", "secret-kind", "key-in-config"])
def test_literal_secret_is_found(docs: list[Doc], break_: str) -> None:
    docs = copy.deepcopy(docs)
    if break_ == "literal-env":
        job = by_kind(docs, "DaskJob")[0]
        job["spec"]["job"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})
    elif break_ == "secret-kind":
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}})
    else:
        config = [d for d in by_kind(docs, "ConfigMap") if k8s.CONFIG_KEY in d["data"]][0]
        config["data"][k8s.CONFIG_KEY] += '\n[catalog.auth]\nsubscription_key = "0123abcd"\n'
    assert literal_secrets(docs) != []


CPU = {"m": 1e-3, "": 1.0}
MEMORY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "": 1.0}


def quantity(value: str, units: dict[str, float]) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value)
    assert m and m.group(2) in units, f"cannot read quantity {value!r}"
    return float(m.group(1)) * units[m.group(2)]


def unbounded_containers(docs: list[Doc]) -> list[str]:
    """Containers without cpu and memory requests and limits, or whose limit is below the request."""
    bad = []
    for d in docs:
        for where, c in containers(d):
            r = c.get("resources", {})
            for res, units in (("cpu", CPU), ("memory", MEMORY)):
                req, lim = r.get("requests", {}).get(res), r.get("limits", {}).get(res)
                if not (isinstance(req, str) and isinstance(lim, str)):
                    bad.append(f"{where}: {res} request {req!r} limit {lim!r}")
                elif quantity(lim, units) < quantity(req, units):
                    bad.append(f"{where}: {res} limit {lim} below request {req}")
    return bad


def test_every_container_has_requests_and_limits(docs: list[Doc]) -> None:
    assert sum(1 for d in docs for _ in containers(d)) >= 10
    assert unbounded_containers(docs) == []


@pytest.mark.parametrize("break_", ["no-limits", "limit-below-request"])
def test_unbounded_container_is_found(docs: list[Doc], break_: str) -> None:
    docs = copy.deepcopy(docs)
    c = by_kind(docs, "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    if break_ == "no-limits":
        del c["resources"]["limits"]
    else:
        c["resources"]["limits"]["memory"] = "1Mi"
    assert unbounded_containers(docs) != []


def test_dask_job_runners_never_restart(docs: list[Doc]) -> None:
    for job in by_kind(docs, "DaskJob"):
        assert job["spec"]["job"]["spec"].get("restartPolicy") == "Never", job["metadata"]["name"]


def test_annual_update_never_overlaps_and_fails_once(docs: list[Doc]) -> None:
    (cron,) = by_kind(docs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    accounts = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert job["template"]["spec"]["serviceAccountName"] in accounts


def test_launcher_script_is_valid_shell(docs: list[Doc]) -> None:
    (cron,) = by_kind(docs, "CronJob")
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "daskjob" in script and k8s.YEAR_PLACEHOLDER in script
    subprocess.run(["sh", "-n", "-c", script], check=True)


def gpu_problems(docs: list[Doc]) -> list[str]:
    """Every cluster has a GPU group; GPU groups ask for a GPU, land on GPU nodes and offer GPU=1 to Dask."""
    problems = []
    clusters = {d["metadata"]["name"] for d in docs if d["kind"] in ("DaskCluster", "DaskJob")}
    groups = by_kind(docs, "DaskWorkerGroup")
    gpu_clusters = set()
    for g in groups:
        name = g["metadata"]["name"]
        pod = g["spec"]["worker"]["spec"]
        (c,) = pod["containers"]
        args = c["args"]
        if c["resources"]["limits"].get("nvidia.com/gpu") != "1":
            problems.append(f"{name}: no nvidia.com/gpu limit of '1'")
        if not any(a == "--resources" and "GPU=1" in args[i + 1].split(",") for i, a in enumerate(args[:-1])):
            problems.append(f"{name}: worker args lack --resources GPU=1")
        if not pod.get("nodeSelector"):
            problems.append(f"{name}: no node selector")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            problems.append(f"{name}: no toleration of the nvidia.com/gpu taint")
        gpu_clusters.add(g["spec"]["cluster"])
    if missing := clusters - gpu_clusters:
        problems.append(f"clusters without a GPU worker group: {sorted(missing)}")
    for d in docs:
        if d["kind"] in ("DaskCluster", "DaskJob"):
            spec = d["spec"] if d["kind"] == "DaskCluster" else d["spec"]["cluster"]["spec"]
            for c in spec["worker"]["spec"]["containers"]:
                if "nvidia.com/gpu" in c["resources"]["limits"] or "--resources" in c["args"]:
                    problems.append(f"{d['metadata']['name']}: the CPU worker group claims a GPU")
    return problems


def test_gpu_worker_groups(docs: list[Doc]) -> None:
    assert len(by_kind(docs, "DaskWorkerGroup")) == 3  # the standing cluster, the global run, the update
    assert gpu_problems(docs) == []


@pytest.mark.parametrize("break_", ["no-resources-flag", "no-gpu-limit", "no-toleration", "cpu-claims-gpu"])
def test_gpu_problem_is_found(docs: list[Doc], break_: str) -> None:
    docs = copy.deepcopy(docs)
    pod = by_kind(docs, "DaskWorkerGroup")[0]["spec"]["worker"]["spec"]
    c = pod["containers"][0]
    if break_ == "no-resources-flag":
        i = c["args"].index("--resources")
        del c["args"][i:i + 2]
    elif break_ == "no-gpu-limit":
        del c["resources"]["limits"]["nvidia.com/gpu"]
    elif break_ == "no-toleration":
        del pod["tolerations"]
    else:
        by_kind(docs, "DaskCluster")[0]["spec"]["worker"]["spec"]["containers"][0]["args"] += ["--resources", "GPU=1"]
    assert gpu_problems(docs) != []


def test_pods_run_as_non_root(docs: list[Doc]) -> None:
    for d in docs:
        for where, pod in pod_specs(d):
            sc = pod.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, where


def test_runners_read_the_config_map(docs: list[Doc]) -> None:
    config = [d for d in by_kind(docs, "ConfigMap") if k8s.CONFIG_KEY in d.get("data", {})]
    assert len(config) == 1
    parsed = tomllib.loads(config[0]["data"][k8s.CONFIG_KEY])
    assert parsed["run"]["years"] and parsed["store"]["url"]
    for job in by_kind(docs, "DaskJob"):
        pod = job["spec"]["job"]["spec"]
        (runner,) = pod["containers"]
        assert k8s.CONFIG_PATH in runner["args"]
        name = config[0]["metadata"]["name"]
        mounted = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == name}
        assert any(m["name"] in mounted and k8s.CONFIG_PATH.startswith(m["mountPath"] + "/")
                   for m in runner["volumeMounts"])


def inventory_problems(docs: list[Doc]) -> list[str]:
    """Runners that could not write the config's inventory: no volume at its directory, or one that is not a
    PersistentVolumeClaim of these manifests (an emptyDir or the image's layers would lose it with the pod)."""
    (config,) = [d for d in by_kind(docs, "ConfigMap") if k8s.CONFIG_KEY in d.get("data", {})]
    url = tomllib.loads(config["data"][k8s.CONFIG_KEY])["inventory"]["url"]
    want = url.rsplit("/", 1)[0] if url.endswith(".parquet") else url.rstrip("/")
    claims = {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    problems = []
    for job in by_kind(docs, "DaskJob"):
        pod = job["spec"]["job"]["spec"]
        (runner,) = pod["containers"]
        name = job["metadata"]["name"]
        mounts = [m for m in runner.get("volumeMounts", []) if want == m["mountPath"]
                  or want.startswith(m["mountPath"].rstrip("/") + "/")]
        if not mounts:
            problems.append(f"{name}: nothing mounted at the inventory's {want}")
            continue
        volume = {v["name"]: v for v in pod.get("volumes", [])}.get(mounts[0]["name"], {})
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim not in claims:
            problems.append(f"{name}: the inventory's volume {mounts[0]['name']!r} is not a claim of these manifests")
        if mounts[0].get("readOnly"):
            problems.append(f"{name}: the inventory is mounted read-only")
    return problems


def test_runners_write_the_inventory_to_a_persistent_volume(docs: list[Doc]) -> None:
    assert {j["metadata"]["name"] for j in by_kind(docs, "DaskJob")} >= {
        k8s.Settings.global_job, f"{k8s.Settings.update_prefix}-{YEAR}"}
    assert inventory_problems(docs) == []
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("break_", ["no-mount", "empty-dir", "no-claim", "read-only"])
def test_inventory_problem_is_found(docs: list[Doc], break_: str) -> None:
    docs = copy.deepcopy(docs)
    pod = by_kind(docs, "DaskJob")[0]["spec"]["job"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "inventory")
    if break_ == "no-mount":
        pod["containers"][0]["volumeMounts"].remove(mount)
    elif break_ == "empty-dir":
        vol = next(v for v in pod["volumes"] if v["name"] == "inventory")
        del vol["persistentVolumeClaim"]
        vol["emptyDir"] = {}
    elif break_ == "no-claim":
        docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
    else:
        mount["readOnly"] = True
    assert inventory_problems(docs) != []


@pytest.mark.parametrize("url, want", [
    ("/var/lib/glacier-stac/inventory", "/var/lib/glacier-stac/inventory"),
    ("/data/inv/inventory.parquet", "/data/inv"),
    ("file:///data/inv/", "/data/inv"),
    ("s3://bucket/inventory", "object storage"),
    ("inventory", "absolute path"),
])
def test_inventory_dir_from_the_run_config(url: str, want: str) -> None:
    toml = f'[inventory]\nurl = "{url}"\n'
    if want.startswith("/"):
        assert k8s.inventory_dir(toml) == want
    else:
        with pytest.raises(ValueError, match=want):
            k8s.inventory_dir(toml)
    assert k8s.inventory_dir("[run]\nyears = [2024]\n") is None
    assert "PersistentVolumeClaim" not in {d["kind"] for docs in k8s.manifests("[run]\n").values() for d in docs}


def test_update_job_is_named_after_its_year(docs: list[Doc]) -> None:
    names = {j["metadata"]["name"] for j in by_kind(docs, "DaskJob")}
    assert f"{k8s.Settings.update_prefix}-{YEAR}" in names
    update = [j for j in by_kind(docs, "DaskJob") if j["metadata"]["name"].endswith(YEAR)][0]
    args = update["spec"]["job"]["spec"]["containers"][0]["args"]
    assert args[args.index("--year") + 1] == YEAR


def test_manifest_commands_exist_in_the_cli(docs: list[Doc]) -> None:
    """`glacier-stac run/update` as the manifests call them are commands of the CLI with those options."""
    import typer

    from glacier_stac.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "the glacier-stac app is not a command group"
    calls = [c["args"] for d in by_kind(docs, "DaskJob") for _, c in containers(d) if c["args"][0] == "glacier-stac"]
    assert {a[1] for a in calls} == {"run", "update"}
    missing = sorted({a[1] for a in calls} - set(group.commands))
    if missing:
        pytest.skip(f"the CLI has no {missing} command yet (pipeline.py, issue 12)")
    for args in calls:
        options = {o for p in group.commands[args[1]].params for o in getattr(p, "opts", [])}
        used = {a for a in args[2:] if a.startswith("--")}
        assert used <= options, f"glacier-stac {args[1]} has no option(s) {sorted(used - options)}"


# ------------------------------------------------------------------------------ images


DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")


def dockerfile_problems(text: str) -> list[str]:
    """Why a Dockerfile would make an image that runs as root, floats its pins or lacks the checkpoints."""
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    problems = []
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), ln.split()[1])
             for ln in lines if ln.upper().startswith("FROM ")]
    if not froms or any(":" not in f or f.endswith(":latest") for f in froms):
        problems.append(f"base images not pinned to a tag: {froms}")
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
        problems.append(f"last USER is {users[-1] if users else None}: want a numeric non-root uid")
    installs = [ln for ln in lines if "pip install" in ln]
    if not installs or not all("-c constraints.txt" in ln for ln in installs):
        problems.append("a pip install without -c constraints.txt")
    if "checkpoints" not in text:
        problems.append("does not check the checkpoints are in the image")
    if re.search(r"^(ENV|ARG)\s+\S*(KEY|SECRET|TOKEN|PASSWORD)", text, re.MULTILINE | re.IGNORECASE):
        problems.append("a credential baked into the image")
    return problems


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    assert dockerfile_problems(text) == []
    if name.endswith("cuda"):
        assert "download.pytorch.org/whl/cu" in text, "the CUDA image installs torch's CUDA build"


@pytest.mark.parametrize("break_", ["root", "latest", "no-constraints"])
def test_bad_dockerfile_is_found(break_: str) -> None:
    text = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    broken = {"root": text + "\nUSER root\n",
              "latest": re.sub(r"^(ARG PYTHON_IMAGE=\S+):\S+", r"\1:latest", text, flags=re.MULTILINE),
              "no-constraints": text.replace("-c constraints.txt", "")}[break_]
    assert broken != text
    assert dockerfile_problems(broken) != []


def test_checkpoints_are_package_data() -> None:
    """The images install the package, so every shipped checkpoint must be in its package data."""
    import fnmatch

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["glacier_stac"]
    package = ROOT / "glacier_stac"
    shipped = [p.relative_to(package).as_posix() for p in (package / "checkpoints").glob("*.pt")]
    assert shipped, "no checkpoints in glacier_stac/checkpoints"
    assert [s for s in shipped if not any(fnmatch.fnmatch(s, p) for p in patterns)] == []
